"""The stop flag of a multi-process job (`train._StopFlag`) without JAX's
preemption service: a Python SIGTERM handler on each process plus an
agreement every EVERY steps (`process_agree.any_process`). Two processes
(gloo CPU collectives); SIGTERM reaches ONE of them, and both must stop at
the same step, a multiple of EVERY.

The default mode, the preemption service, is run end to end (a 2-process
`vit_jax.main` job stopped by SIGTERM to one process, saving the same step
on both, relaunched to the end) by tests/launch/test_local.py.
"""

import re
import signal
import socket
import subprocess
import sys
import time

from tests import conftest
from tests.conftest import REPO

TIMEOUT_S = 300


def _port() -> int:
  s = socket.socket()
  s.bind(('', 0))
  port = s.getsockname()[1]
  s.close()
  return port


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


EVERY = 4
_FLAG_LOOP = '''
import os, sys, time
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.config.update('jax_enable_preemption_service', False)
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


def test_stop_flag_without_the_service_agrees_across_processes(tmp_path):
  port = _port()
  env = conftest.subprocess_env()
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO),
             XLA_FLAGS=conftest.COMPILE_FLAGS)
  logs = [tmp_path / f'{i}.log' for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, 'w') as out:
      procs.append(subprocess.Popen(
          [sys.executable, '-c', _FLAG_LOOP, str(i), str(port)],
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
  assert int(stops[0][0]) % EVERY == 0
