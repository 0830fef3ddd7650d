"""Pod-wide preemption on one machine: a 2-process job (gloo CPU
collectives, the environment `launch/local.sh` sets) gets SIGTERM on ONE
process mid-run; both processes must save the same step and exit 0, and a
relaunch must resume from it and end with the parameters and optimizer state
of a straight run, array for array (numpy, read back from the checkpoints).
"""

import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import conftest
from tests.conftest import REPO

# The notice needs about a second to reach the other process (the run goes
# on meanwhile): TOTAL leaves room for that at ~150 steps/s.
TOTAL = 200
SIGNAL_AT = 5  # step seen in process 0's log when SIGTERM is sent
TIMEOUT_S = 300


def _port() -> int:
  s = socket.socket()
  s.bind(('', 0))
  port = s.getsockname()[1]
  s.close()
  return port


def _args(workdir):
  return ['--config=configs/vit.py:mu16,synthetic,res=32',
          f'--workdir={workdir}', '--config.batch_size=16',
          '--config.eval_batch_size=16', f'--config.total_steps={TOTAL}',
          '--config.warmup_steps=2', '--config.checkpoint_every=0',
          '--config.log_every=5', '--config.eval_every=0',
          '--config.async_checkpoints=False']


def _launch(workdir, logs):
  """Two processes of `vit_jax.main` as one job, 1 CPU device each."""
  port = _port()
  procs = []
  for i, log in enumerate(logs):
    env = conftest.subprocess_env()
    env.update(JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1',
               XLA_FLAGS='--xla_force_host_platform_device_count=1')
    out = open(log, 'w')
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'vit_jax.main', *_args(workdir),
         '--distributed', f'--coordinator_address=localhost:{port}',
         '--num_processes=2', f'--process_id={i}'], cwd=REPO,
        env=env, stdout=out, stderr=subprocess.STDOUT))
    out.close()
  return procs


def _wait(procs, logs):
  deadline = time.time() + TIMEOUT_S
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError('job timed out: ' + logs[0].read_text()[-2000:])
  return [p.returncode for p in procs]


def _steps(workdir: pathlib.Path) -> list[int]:
  d = workdir / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def _load(workdir):
  """{path: numpy array} of the workdir's newest checkpoint."""
  # pylint: disable=g-import-not-at-top
  import jax
  from vit_jax.checkpoints import train_state
  from vit_jax.training import sharding
  state = train_state.load_state(str(workdir))
  return {sharding.path_str(path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(state)}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('preemption')
  straight, preempted = tmp / 'straight', tmp / 'preempted'
  logs_s = [tmp / f'straight{i}.log' for i in range(2)]
  logs_p = [tmp / f'preempted{i}.log' for i in range(2)]
  logs_r = [tmp / f'resumed{i}.log' for i in range(2)]
  # The straight run and the run to be preempted go side by side.
  procs_s = _launch(straight, logs_s)
  procs_p = _launch(preempted, logs_p)
  deadline = time.time() + TIMEOUT_S
  while not re.search(rf'^step {SIGNAL_AT}/', logs_p[0].read_text(), re.M):
    assert time.time() < deadline and procs_p[0].poll() is None, (
        logs_p[0].read_text()[-2000:])
    time.sleep(0.05)
  procs_p[1].send_signal(signal.SIGTERM)  # one process only
  rc_p = _wait(procs_p, logs_p)
  steps_p = _steps(preempted)
  texts_p = [l.read_text() for l in logs_p]
  rc_r = _wait(_launch(preempted, logs_r), logs_r)
  rc_s = _wait(procs_s, logs_s)
  return dict(straight=straight, preempted=preempted, rc_p=rc_p, rc_r=rc_r,
              rc_s=rc_s, steps_p=steps_p, texts_p=texts_p,
              texts_r=[l.read_text() for l in logs_r],
              texts_s=[l.read_text() for l in logs_s])


def test_sigterm_to_one_process_saves_the_same_step_on_both(runs):
  assert runs['rc_p'] == [0, 0], runs['texts_p'][0][-2000:] + runs[
      'texts_p'][1][-2000:]
  stops = [re.findall(rf'process {i}/2: stopping at step (\d+): saving',
                      text) for i, text in enumerate(runs['texts_p'])]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  step = int(stops[0][0])
  assert SIGNAL_AT <= step < TOTAL, step
  assert runs['steps_p'] == [step]  # the only checkpoint, finalized
  assert not re.search(rf'^step ({step + 1}|{TOTAL})/', runs['texts_p'][0],
                       re.M)
  print(f'stopped at step {step} (SIGTERM after step {SIGNAL_AT})')


def test_relaunch_resumes_and_equals_a_straight_run(runs):
  assert runs['rc_s'] == [0, 0], runs['texts_s'][0][-2000:]
  assert runs['rc_r'] == [0, 0], runs['texts_r'][0][-2000:]
  step = runs['steps_p'][0]
  resumed = runs['texts_r'][0]
  assert f'resuming from {runs["preempted"]}/checkpoints/{step}' in resumed
  first = int(re.search(r'^step (\d+)/', resumed, re.M).group(1))
  assert step < first <= step + 5  # log_every=5
  assert _steps(runs['preempted'])[-1] == TOTAL
  assert _steps(runs['straight']) == [TOTAL]
  a, b = _load(runs['preempted']), _load(runs['straight'])
  assert sorted(a) == sorted(b) and len(a) > 10
  assert int(a['step']) == int(b['step']) == TOTAL
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# The stop flag alone, in both of its multi-process modes: JAX's preemption
# service (the default) and, with the service off, a Python SIGTERM handler
# plus an agreement every EVERY steps (`process_agree.any_process`).
EVERY = 4
_FLAG_LOOP = '''
import os, sys, time
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.config.update('jax_enable_preemption_service', sys.argv[3] == 'on')
jax.distributed.initialize(coordinator_address='localhost:' + sys.argv[2],
                           num_processes=2, process_id=int(sys.argv[1]))
from vit_jax.training import train
stop = train._StopFlag(every=%d)
print('ready', flush=True)
for step in range(1, 3_000):  # 30 s at most
  time.sleep(0.01)
  if stop.should_stop(step):
    print('stopped at', step, flush=True)
    break
''' % EVERY


@pytest.mark.parametrize('service', ['on', 'off'])
def test_stop_flag_agrees_across_processes(service, tmp_path):
  port = _port()
  env = conftest.subprocess_env()
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  logs = [tmp_path / f'{i}.log' for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, 'w') as out:
      procs.append(subprocess.Popen(
          [sys.executable, '-c', _FLAG_LOOP, str(i), str(port), service],
          cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
  deadline = time.time() + TIMEOUT_S
  while not all('ready' in l.read_text() for l in logs):
    assert time.time() < deadline and all(p.poll() is None for p in procs), (
        logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:])
    time.sleep(0.05)
  time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)
  assert _wait(procs, logs) == [0, 0], logs[1].read_text()[-2000:]
  stops = [re.findall(r'^stopped at (\d+)$', l.read_text(), re.M)
           for l in logs]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  if service == 'off':
    assert int(stops[0][0]) % EVERY == 0
