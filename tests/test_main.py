"""Tests of the entry point: bad command lines give one-line errors, and the
train -> evaluate dispatch works end to end."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

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


# --------------------------------------------------------------------------
# Failures of whole runs end with one `error:` line and exit status 1.

SMALL = ['--config=configs/vit.py:mu16,synthetic,res=32',
         '--config.batch_size=16', '--config.eval_batch_size=40',
         '--config.warmup_steps=1', '--config.eval_every=0',
         '--config.log_every=1']


def one_error_line(proc) -> str:
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert 'File "' not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert proc.stderr.rstrip().endswith(lines[0])  # the last word
  return lines[0]


def _env(devices=1):
  return dict(os.environ, JAX_PLATFORMS='cpu',
              JAX_DISABLE_MOST_OPTIMIZATIONS='1',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def test_second_run_on_a_workdir_is_refused_naming_the_owner(tmp_path):
  """Two runs on one workdir: the second refuses at once; the first, asked
  to stop (SIGTERM), saves its step and exits 0."""
  workdir = tmp_path / 'w'
  log = tmp_path / 'first.log'
  with open(log, 'w') as out:
    first = subprocess.Popen(
        [sys.executable, '-m', 'vit_jax.main', *SMALL, f'--workdir={workdir}',
         '--config.total_steps=100000', '--config.checkpoint_every=0'],
        cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)
  lock = workdir / 'lock'
  try:
    deadline = time.time() + 240
    while 'step 2/100000' not in log.read_text():  # the first run trains
      assert first.poll() is None and time.time() < deadline, log.read_text()
      time.sleep(0.2)
    owner = json.loads(lock.read_text())
    assert owner['pid'] == first.pid
    second = subprocess.run(
        [sys.executable, '-m', 'vit_jax.main', *SMALL,
         f'--workdir={workdir}', '--config.total_steps=4'],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    line = one_error_line(second)
    assert line == (
        f'error: workdir {workdir} is in use by another run (host '
        f'{owner["host"]} pid {first.pid} started {owner["started"]}; lock '
        f'file {workdir}/lock); wait for it to finish or use another '
        '--workdir')
    assert json.loads(lock.read_text()) == owner  # untouched
  finally:
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=240)
  out = log.read_text()
  assert first.returncode == 0, out[-3000:]
  stopped = [l for l in out.splitlines() if l.startswith('stopping at step')]
  assert len(stopped) == 1, out[-2000:]
  step = int(stopped[0].split()[3].rstrip(':'))
  assert os.listdir(workdir / 'checkpoints') == [str(step)]
  assert not (workdir / 'lock').exists()
  assert json.loads((workdir / 'config.json').read_text())[
      'total_steps'] == 100000


@pytest.mark.parametrize('where', ['file', 'proc'])
def test_workdir_that_cannot_be_created(where, tmp_path):
  if where == 'file':
    (tmp_path / 'f').write_text('x')
    workdir = tmp_path / 'f' / 'w'
  else:
    workdir = pathlib.Path('/proc/self/vit_jax_workdir')
  proc = run_main(*SMALL, f'--workdir={workdir}', '--config.total_steps=2',
                  devices=1)
  line = one_error_line(proc)
  assert line.startswith(f'error: cannot create workdir {workdir}: '), line


_FULL_DISK = '''
import errno, os, sys
from etils import epath
cls = type(epath.Path('/'))
write_text = cls.write_text
def full(self, *a, **k):
  if '/checkpoints/4.orbax-checkpoint-tmp' in str(self):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
  return write_text(self, *a, **k)
cls.write_text = full
from absl import app
from vit_jax import main
sys.argv[0] = 'vit_jax.main'
app.run(main.main, flags_parser=main.parse_flags)
'''


def test_full_disk_during_an_async_save_is_one_line(tmp_path):
  """Orbax's background save of step 4 hits ENOSPC (injected into its
  metadata write); steps 2 (and 3) stay intact."""
  proc = subprocess.run(
      [sys.executable, '-c', _FULL_DISK, *SMALL, f'--workdir={tmp_path}',
       '--config.total_steps=6', '--config.checkpoint_every=1',
       '--config.keep_checkpoints=2'],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  line = one_error_line(proc)
  assert line.startswith(f'error: saving checkpoint step 4 in {tmp_path}/'
                         'checkpoints failed: no space left on device'), line
  assert line.endswith('earlier checkpoints are intact (steps 2, 3): rerun '
                       'the same command to resume from step 3'), line
  steps = sorted(d for d in os.listdir(tmp_path / 'checkpoints')
                 if d.isdigit())
  assert steps == ['2', '3']
