"""Tests of the entry point: bad command lines give one-line errors, and the
train -> evaluate dispatch works end to end."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

from vit_jax import main

REPO = pathlib.Path(__file__).resolve().parent.parent
# Compile time dominates these tiny models on CPU (conftest fixture).
pytestmark = pytest.mark.usefixtures('fast_compile')


def run_main(*args, devices=8):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run([sys.executable, '-m', 'vit_jax.main', *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize('args, match', [
    (['--config=configs/vit.py:mu16,synthetic', '--config.bogus=1'],
     "unknown config key 'config.bogus': config has no 'bogus'; allowed: "
     'accum_steps, '),
    (['--config=configs/vit.py:mu16,synthetic', '--config.optim.lrr=1'],
     "config.optim has no 'lrr'; allowed: b1, b2, base_lr"),
    (['--config=configs/vit.py:mu16,cifar11'],
     "'cifar11' is neither a model (mu4, mu16"),
    (['--config=configs/vit.py:mu16,synthetic,res=32',
      '--config.batch_size=20'],
     'config.batch_size=20 (per micro-batch 20) is not divisible by the 8 '
     'devices'),
])
def test_bad_command_lines_fail_with_one_line(args, match, tmp_path):
  proc = run_main(*args, f'--workdir={tmp_path}')
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert match in lines[0]
  assert 'Traceback' not in proc.stderr


def test_train_then_evaluate(tmp_path):
  from configs import vit as vit_config  # pylint: disable=g-import-not-at-top
  config = vit_config.get_config('mu16,synthetic,res=32')
  config.batch_size, config.eval_batch_size = 16, 40
  config.total_steps, config.warmup_steps = 8, 2
  config.checkpoint_every = 4
  config.mesh.data, config.mesh.fsdp = 4, 2
  trained = main.run(config, str(tmp_path))
  config.trainer = 'evaluate'
  evaluated = main.run(config, str(tmp_path))
  assert evaluated['count'] == 200
  assert abs(evaluated['top1'] - trained['eval']['top1']) < 1e-6
  assert abs(evaluated['loss'] - trained['eval']['loss']) < 1e-5
  assert jax.device_count() == 8
