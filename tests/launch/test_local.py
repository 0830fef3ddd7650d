"""The pod story on one machine: `launch/local.sh 2 2` runs vit_jax.main as
two JAX processes (gloo CPU collectives) on a data x fsdp = 2 x 2 mesh; the
job is killed (SIGKILL, every process, as a preempted slice) after its first
checkpoint, then relaunched with the same command and workdir, and must
resume from its last checkpoint and finish. Every step's loss, before the
kill and after the resume, equals that of the same run in one process on
one device."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import conftest

from tests.launch import stubs

TOTAL = 40
EVERY = 10
TIMEOUT_S = 240


def _command(workdir):
  return ['bash', str(stubs.REPO / 'launch' / 'local.sh'), '2', '2', '--',
          '--config=configs/vit.py:mu16,synthetic,res=32',
          f'--workdir={workdir}', '--config.batch_size=16',
          '--config.eval_batch_size=40', f'--config.total_steps={TOTAL}',
          '--config.warmup_steps=2', f'--config.checkpoint_every={EVERY}',
          '--config.log_every=1', '--config.eval_every=0',
          '--config.mesh.data=2', '--config.mesh.fsdp=2',
          '--config.optim.momentum_dtype=float32']


def _env():
  env = conftest.subprocess_env()
  env['PYTHON'] = sys.executable
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'  # faster compiles, CPU only
  return env


def _finalized(workdir: pathlib.Path) -> list[int]:
  """Steps of finalized checkpoints (Orbax renames tmp dirs when done)."""
  d = workdir / 'checkpoints'
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


@pytest.fixture(scope='module')
def killed_then_resumed(tmp_path_factory):
  """Runs the job, kills it after its first checkpoint, relaunches it."""
  tmp = tmp_path_factory.mktemp('local_launch')
  workdir = tmp / 'workdir'
  log1, log2 = tmp / 'run1.log', tmp / 'run2.log'
  with open(log1, 'w') as out:
    proc = subprocess.Popen(_command(workdir), cwd=stubs.REPO, env=_env(),
                            stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      deadline = time.time() + TIMEOUT_S
      while not _finalized(workdir) and proc.poll() is None:
        assert time.time() < deadline, log1.read_text()[-3000:]
        time.sleep(0.05)
    finally:
      os.killpg(proc.pid, signal.SIGKILL)  # every process of the job
      proc.wait()
  steps_at_kill = _finalized(workdir)
  with open(log2, 'w') as out:
    rc = subprocess.run(_command(workdir), cwd=stubs.REPO, env=_env(),
                        stdout=out, stderr=subprocess.STDOUT,
                        timeout=TIMEOUT_S, check=False).returncode
  return dict(workdir=workdir, run1=log1.read_text(), run2=log2.read_text(),
              steps_at_kill=steps_at_kill, rc=rc)


def test_two_processes_train_and_checkpoint(killed_then_resumed):
  r = killed_then_resumed
  run1 = r['run1']
  assert re.search(r"\[0\] mesh \{'data': 2, 'fsdp': 2, .*on 4 devices, "
                   '2 processes', run1)
  assert '[1] ' in run1  # the second process ran (its output is prefixed)
  losses = [float(x) for x in re.findall(r'\[0\] step \d+/\d+ loss ([\d.]+)',
                                         run1)]
  assert len(losses) >= EVERY and all(0 < l < 10 for l in losses)
  assert r['steps_at_kill'] and r['steps_at_kill'][0] == EVERY
  assert (r['workdir'] / 'config.json').is_file()


def test_killed_run_resumes_from_last_checkpoint(killed_then_resumed):
  r = killed_then_resumed
  last = r['steps_at_kill'][-1]
  assert last < TOTAL, 'the first run was not killed mid-way'
  assert f'step {TOTAL}/{TOTAL}' not in r['run1']
  run2 = r['run2']
  assert r['rc'] == 0, run2[-3000:]
  assert f'resuming from {r["workdir"]}/checkpoints/{last}' in run2
  steps = [int(s) for s in re.findall(r'\[0\] step (\d+)/', run2)]
  assert steps[0] == last + 1 and steps[-1] == TOTAL
  assert re.search(rf'\[0\] eval step {TOTAL}: top1 [\d.]+', run2)
  assert TOTAL in _finalized(r['workdir'])


def test_every_loss_equals_one_process_on_one_device(killed_then_resumed,
                                                     tmp_path):
  # pylint: disable=g-import-not-at-top
  import jax
  from tests.tiny_configs import train_config
  from vit_jax.training import train
  two = conftest.read_scalars(killed_then_resumed['workdir'])['train/loss']
  assert sorted(two) == list(range(1, TOTAL + 1))
  config = train_config(total_steps=TOTAL, checkpoint_every=EVERY)
  one = train.train_and_evaluate(config, str(tmp_path / 'one'),
                                 devices=jax.devices()[:1])['train_losses']
  assert sorted(one) == sorted(two)
  for k in one:
    assert abs(two[k] - one[k]) < 1e-5, (k, two[k], one[k])
