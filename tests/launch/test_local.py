"""The pod story on one machine: `launch/local.sh 2 2` runs vit_jax.main as
two JAX processes (gloo CPU collectives) on a data x fsdp = 2 x 2 mesh, and
the job survives both ways a slice goes away:

1. killed (SIGKILL, every process, as a lost slice) after its first
   periodic checkpoint;
2. relaunched with the same command and workdir, it resumes from that
   checkpoint; then ONE of its processes gets SIGTERM (a preemption notice,
   JAX's preemption service): both processes must save the same step and
   exit 0;
3. relaunched again, it resumes from that step and finishes.

Every step's loss, across the three launches, and the final parameters and
optimizer state equal those of the same run in one process on one device.
"""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import conftest

from tests.launch import stubs

TOTAL = 40
EVERY = 10  # periodic checkpoints
SIGNAL_AT = EVERY + 5  # step seen in process 0's log of launch 2 at SIGTERM
TIMEOUT_S = 240


def _command(workdir):
  return ['bash', str(stubs.REPO / 'launch' / 'local.sh'), '2', '2', '--',
          '--config=configs/vit.py:mu16,synthetic,res=32',
          f'--workdir={workdir}', '--config.batch_size=16',
          '--config.eval_batch_size=40', f'--config.total_steps={TOTAL}',
          '--config.warmup_steps=2', f'--config.checkpoint_every={EVERY}',
          '--config.log_every=1', '--config.eval_every=0',
          '--config.mesh.data=2', '--config.mesh.fsdp=2',
          '--config.optim.momentum_dtype=float32',
          '--config.async_checkpoints=False']


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


def _pid_of_process(workdir, process_id: int) -> int:
  """The pid of the job's Python process `process_id` (from /proc)."""
  for entry in pathlib.Path('/proc').iterdir():
    if not entry.name.isdigit():
      continue
    try:
      argv = (entry / 'cmdline').read_bytes().split(b'\0')
    except OSError:
      continue
    if (f'--workdir={workdir}'.encode() in argv and
        f'--process_id={process_id}'.encode() in argv and
        b'vit_jax.main' in argv):
      return int(entry.name)
  raise AssertionError(f'process {process_id} of the job is not running')


def _wait_for(predicate, proc, log):
  deadline = time.time() + TIMEOUT_S
  while not predicate():
    assert time.time() < deadline and proc.poll() is None, (
        log.read_text()[-3000:])
    time.sleep(0.05)


@pytest.fixture(scope='module')
def launches(tmp_path_factory):
  """Runs the job three times on one workdir (module doc)."""
  tmp = tmp_path_factory.mktemp('local_launch')
  workdir = tmp / 'workdir'
  logs = [tmp / f'launch{i}.log' for i in (1, 2, 3)]
  run = dict(cwd=stubs.REPO, env=_env(), stderr=subprocess.STDOUT)
  # 1: SIGKILL to every process after the first periodic checkpoint.
  with open(logs[0], 'w') as out:
    proc = subprocess.Popen(_command(workdir), stdout=out,
                            start_new_session=True, **run)
    try:
      _wait_for(lambda: _finalized(workdir), proc, logs[0])
    finally:
      os.killpg(proc.pid, signal.SIGKILL)  # every process of the job
      proc.wait()
  steps_at_kill = _finalized(workdir)
  # 2: resumes; SIGTERM to process 1 only once process 0 is past SIGNAL_AT.
  with open(logs[1], 'w') as out:
    proc = subprocess.Popen(_command(workdir), stdout=out, **run)
    try:
      _wait_for(lambda: re.search(rf'^\[0\] step {SIGNAL_AT}/',
                                  logs[1].read_text(), re.M), proc, logs[1])
      os.kill(_pid_of_process(workdir, 1), signal.SIGTERM)
      rc2 = proc.wait(timeout=TIMEOUT_S)
    finally:
      if proc.poll() is None:
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
  steps_after_stop = _finalized(workdir)
  # 3: resumes from the step saved at the stop and finishes.
  with open(logs[2], 'w') as out:
    rc3 = subprocess.run(_command(workdir), stdout=out, timeout=TIMEOUT_S,
                         check=False, **run).returncode
  return dict(workdir=workdir, texts=[l.read_text() for l in logs],
              steps_at_kill=steps_at_kill, steps_after_stop=steps_after_stop,
              rc2=rc2, rc3=rc3)


def _steps(text: str) -> list[int]:
  return [int(s) for s in re.findall(r'^\[0\] step (\d+)/', text, re.M)]


def test_two_processes_train_and_checkpoint(launches):
  run1 = launches['texts'][0]
  assert re.search(r"\[0\] mesh \{'data': 2, 'fsdp': 2, .*on 4 devices, "
                   '2 processes', run1)
  assert '[1] ' in run1  # the second process ran (its output is prefixed)
  losses = [float(x) for x in re.findall(r'\[0\] step \d+/\d+ loss ([\d.]+)',
                                         run1)]
  assert len(losses) >= EVERY and all(0 < l < 10 for l in losses)
  assert launches['steps_at_kill'] == [EVERY]
  assert (launches['workdir'] / 'config.json').is_file()


def test_killed_job_resumes_from_its_last_checkpoint(launches):
  run1, run2 = launches['texts'][:2]
  assert f'step {TOTAL}/{TOTAL}' not in run1
  assert (f'resuming from {launches["workdir"]}/checkpoints/{EVERY}' in
          run2), run2[-3000:]
  assert _steps(run2)[0] == EVERY + 1


def test_sigterm_to_one_process_saves_the_same_step_on_both(launches):
  run2 = launches['texts'][1]
  assert launches['rc2'] == 0, run2[-3000:]
  stops = [re.findall(rf'^\[{i}\] process {i}/2: stopping at step (\d+): '
                      'saving', run2, re.M) for i in range(2)]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  step = int(stops[0][0])
  assert SIGNAL_AT <= step < TOTAL, step
  assert launches['steps_after_stop'][-1] == step  # finalized
  assert _steps(run2)[-1] == step  # no step after the save


def test_relaunch_after_the_stop_finishes(launches):
  run3 = launches['texts'][2]
  assert launches['rc3'] == 0, run3[-3000:]
  step = launches['steps_after_stop'][-1]
  assert f'resuming from {launches["workdir"]}/checkpoints/{step}' in run3
  steps = _steps(run3)
  assert steps[0] == step + 1 and steps[-1] == TOTAL
  assert re.search(rf'\[0\] eval step {TOTAL}: top1 [\d.]+', run3)
  assert TOTAL in _finalized(launches['workdir'])


def test_every_loss_and_the_state_equal_one_process_on_one_device(launches,
                                                                   tmp_path):
  # pylint: disable=g-import-not-at-top
  import jax
  from tests.tiny_configs import train_config
  from vit_jax.checkpoints import train_state
  from vit_jax.training import sharding
  from vit_jax.training import train
  two = conftest.read_scalars(launches['workdir'])['train/loss']
  assert sorted(two) == list(range(1, TOTAL + 1))
  config = train_config(total_steps=TOTAL, checkpoint_every=0)
  one = train.train_and_evaluate(config, str(tmp_path / 'one'),
                                 devices=jax.devices()[:1])
  assert sorted(one['train_losses']) == sorted(two)
  for k, loss in one['train_losses'].items():
    assert abs(two[k] - loss) < 1e-5, (k, two[k], loss)
  saved = train_state.load_state(str(launches['workdir']))
  leaves = lambda state: {
      sharding.path_str(p): np.asarray(v)
      for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state))}
  a, b = leaves(saved), leaves(one['state'])
  assert sorted(a) == sorted(b) and len(a) > 10
  assert int(a['step']) == TOTAL
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
