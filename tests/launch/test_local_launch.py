"""A 2-process job through launch/local.sh, killed mid-way (a preempted pod)
and relaunched with the same workdir: it resumes from its last checkpoint.
"""

import os
import pathlib
import re
import signal
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 24


def command(workdir):
  return ['bash', str(REPO / 'launch' / 'local.sh'), '2', '2', '--',
          '--config=configs/vit.py:mu16,synthetic,res=32',
          f'--workdir={workdir}', '--config.batch_size=16',
          '--config.eval_batch_size=40', f'--config.total_steps={STEPS}',
          '--config.warmup_steps=2', '--config.log_every=1',
          '--config.eval_every=0', '--config.checkpoint_every=4',
          '--config.keep_checkpoints=2', '--config.mesh.data=2',
          '--config.mesh.fsdp=2']


def env():
  e = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  e['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  return e


def checkpoints(workdir):
  d = workdir / 'checkpoints'
  return sorted(int(p) for p in os.listdir(d) if p.isdigit()) if d.is_dir(
  ) else []


def test_killed_job_resumes_from_its_last_checkpoint(tmp_path):
  workdir = tmp_path / 'pod'
  proc = subprocess.Popen(command(workdir), cwd=REPO, env=env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
  deadline = time.time() + 600
  try:
    while time.time() < deadline and proc.poll() is None:
      if any(s >= 8 for s in checkpoints(workdir)):
        break
      time.sleep(0.5)
    assert proc.poll() is None, 'the job ended before it could be killed'
    assert any(s >= 8 for s in checkpoints(workdir)), 'no checkpoint in time'
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # preemption: no clean shutdown
    proc.wait()
  before = checkpoints(workdir)
  assert before and max(before) < STEPS

  again = subprocess.run(command(workdir), cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
  resumed = [int(m) for m in re.findall(r'\[0\] .*resuming from \S*/(\d+)',
                                        again.stdout)]
  assert resumed, again.stdout[-3000:]
  assert resumed[0] >= 8 and resumed[0] in before
  assert checkpoints(workdir)[-1] == STEPS
  # the relaunch trained only the remaining steps
  steps_logged = [int(s) for s in re.findall(r'\[0\] .*step\D{0,3}(\d+)',
                                             again.stdout)]
  assert steps_logged and min(steps_logged) > resumed[0] - 1
