"""Fault injection on real training runs: does a run survive, or refuse?

    python benchmarks/fault_injection.py [--workroot=/tmp/fault_injection]
        [--seed=0] [--cases=kill_random,sigterm,...]

Runs `python -m vit_jax.main --config=configs/cpu.py:digits` (mu/4 on the
embedded digits; 40 steps, a checkpoint every 10) once straight, then under
each fault, and prints a table `case | expected | observed | ok`:

  kill_random     SIGKILL at a random moment of training, rerun: the final
                  checkpoint equals the straight run's bit for bit
  kill_at_save    SIGKILL as soon as a save's temporary directory appears,
                  rerun: the same
  sigterm         SIGTERM mid-run (preemption): saves, exits 0; rerun: same
  truncate, delete_metadata, flip_bytes
                  the newest checkpoint (40) of a copy of the straight run
                  corrupted (largest data file cut to 100 bytes /
                  default/_METADATA deleted / 64 bytes flipped), rerun: falls
                  back to step 30, ends equal to the straight run
  concurrent      a second run on the workdir of a running one: refused,
                  one line naming the owner
  batch_size      a resume with another batch_size: refused by name; with
                  --config.allow_config_change=batch_size: resumes
  nan             a huge learning rate: stopped with one line, exit 1, no
                  checkpoint at or after the first non-finite step
  unwritable      a workdir under a regular file and under /proc: one line
  disk_full       the workdir on a 2 MiB tmpfs (needs root: mount): one
                  line, earlier checkpoints intact; rerun with room: equal

"Equal" compares every array of the step-40 checkpoints (params, optimizer
state, RNG, step) with numpy; an `error:` outcome must be exactly one line
on stderr, the last, with no traceback. Exits 1 if a case is not ok.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOTAL, EVERY = 40, 10
BASE = ['--config=configs/cpu.py:digits', f'--config.total_steps={TOTAL}',
        f'--config.checkpoint_every={EVERY}', '--config.warmup_steps=5',
        '--config.eval_every=0', '--config.log_every=1']
CASES = ('kill_random', 'kill_at_save', 'sigterm', 'truncate',
         'delete_metadata', 'flip_bytes', 'concurrent', 'batch_size', 'nan',
         'unwritable', 'disk_full')


class Run:
  """One `vit_jax.main` process; output in `<log_dir>/<workdir>.<n>.log`."""
  count = 0
  log_dir: pathlib.Path = pathlib.Path('.')

  def __init__(self, workdir: pathlib.Path, *extra: str):
    Run.count += 1
    log_dir = Run.log_dir
    self.log = log_dir / f'{workdir.name}.{Run.count}.log'
    self.err = log_dir / f'{workdir.name}.{Run.count}.err'
    env = {k: v for k, v in os.environ.items() if not k.startswith('XLA_')}
    env['JAX_PLATFORMS'] = 'cpu'
    with open(self.log, 'w') as out, open(self.err, 'w') as err:
      self.proc = subprocess.Popen(
          [sys.executable, '-m', 'vit_jax.main', *BASE, *extra,
           f'--workdir={workdir}'], cwd=REPO, env=env, stdout=out,
          stderr=err, start_new_session=True)

  def wait(self, timeout: float = 600) -> int:
    return self.proc.wait(timeout=timeout)

  def stdout(self) -> str:
    return self.log.read_text()

  def stderr(self) -> str:
    return self.err.read_text()

  def signal(self, sig) -> None:
    os.killpg(self.proc.pid, sig)  # our own session: the run only

  def steps_logged(self) -> int:
    steps = [int(l.split()[1].split('/')[0]) for l in self.stdout().splitlines()
             if l.startswith('step ')]
    return max(steps, default=0)


def run(workdir, *extra, timeout=600) -> Run:
  r = Run(workdir, *extra)
  r.wait(timeout)
  return r


def error_line(r: Run) -> Optional[str]:
  """The one `error:` line of a failed run, None if the output breaks the
  rule (not exit 1, several lines, a traceback, not last)."""
  err = r.stderr()
  lines = [l for l in err.splitlines() if l.startswith('error:')]
  if (r.proc.returncode != 1 or len(lines) != 1 or 'Traceback' in err
      or not err.rstrip().endswith(lines[0])):
    return None
  return lines[0]


def final_state(workdir: pathlib.Path):
  from vit_jax.checkpoints import train_state  # pylint: disable=g-import-not-at-top
  return train_state.load_state(str(workdir / 'checkpoints' / str(TOTAL)))


def equal_states(a, b) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def steps_on_disk(workdir: pathlib.Path) -> list[int]:
  d = workdir / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) \
      if d.is_dir() else []


def short(text: str, n: int = 110) -> str:
  text = ' '.join(text.split())
  return text if len(text) <= n else text[:n - 3] + '...'


class Bench:
  """The cases, sharing one straight run (`self.straight`)."""

  def __init__(self, root: pathlib.Path, seed: int):
    self.root = root
    self.rng = random.Random(seed)
    self.straight_dir = root / 'straight'
    r = Run(self.straight_dir)
    _wait_for(lambda: r.steps_logged() >= 1 or r.proc.poll() is not None,
              poll=0.01)
    t0 = time.time()
    _wait_for(lambda: r.steps_logged() >= TOTAL or r.proc.poll() is not None,
              poll=0.01)
    self.train_seconds = time.time() - t0  # steps 2..TOTAL, wall
    if r.wait() != 0:
      raise SystemExit(f'the straight run failed: {r.stderr()[-2000:]}')
    self.straight = final_state(self.straight_dir)

  def resumed_equal(self, workdir) -> str:
    r = run(workdir)
    if r.proc.returncode != 0:
      return f'rerun exit {r.proc.returncode}: {short(r.stderr()[-300:])}'
    resumed = [l for l in r.stdout().splitlines()
               if l.startswith('resuming from')]
    same = equal_states(final_state(workdir), self.straight)
    where = resumed[0].rsplit('/', 1)[1] if resumed else 'start'
    return f'resumed at {where}, final {"==" if same else "!="} straight'

  # -- kills -----------------------------------------------------------------

  def kill_random(self):
    w = self.root / 'kill_random'
    r = Run(w)
    _wait_for(lambda: r.steps_logged() >= 1 or r.proc.poll() is not None,
              poll=0.01)
    delay = self.rng.uniform(0, self.train_seconds)
    time.sleep(delay)
    at = r.steps_logged()
    r.signal(signal.SIGKILL)
    r.wait()
    saved = steps_on_disk(w)
    observed = (f'killed {delay:.2f}s after step 1 (at step {at}, saved '
                f'{saved}); ' + self.resumed_equal(w))
    return ('resume == straight', observed, observed.endswith('== straight')
            and TOTAL not in saved)

  def kill_at_save(self):
    w = self.root / 'kill_at_save'
    r = Run(w)
    ckpt = w / 'checkpoints'

    def saving():
      return r.proc.poll() is not None or (ckpt.is_dir() and any(
          p.name.startswith('20.orbax-checkpoint-tmp')
          for p in ckpt.iterdir()))
    _wait_for(saving, poll=0.001)  # the save of step 20 has begun
    r.signal(signal.SIGKILL)
    r.wait()
    left = sorted(p.name for p in ckpt.iterdir())
    observed = f'killed with {left} on disk; ' + self.resumed_equal(w)
    return ('resume == straight', observed,
            observed.endswith('== straight') and '20' not in left)

  def sigterm(self):
    w = self.root / 'sigterm'
    r = Run(w)
    _wait_for(lambda: r.steps_logged() >= 15 or r.proc.poll() is not None)
    r.signal(signal.SIGTERM)
    rc = r.wait()
    stopped = [l for l in r.stdout().splitlines()
               if l.startswith('stopping at step')]
    observed = (f'exit {rc}, "{stopped[0] if stopped else "no stop line"}"; '
                + self.resumed_equal(w))
    return ('saves, exit 0; resume == straight', observed,
            rc == 0 and bool(stopped) and observed.endswith('== straight'))

  # -- corrupt newest checkpoint ------------------------------------------------

  def _corrupt(self, name, damage):
    w = self.root / name
    shutil.copytree(self.straight_dir, w)  # a finished run: steps 20, 30, 40
    damage(w / 'checkpoints' / str(TOTAL))
    r = run(w)
    skipped = [l for l in r.stdout().splitlines()
               if l.startswith(f'checkpoint step {TOTAL} skipped')]
    resumed = [l for l in r.stdout().splitlines()
               if l.startswith('resuming from')]
    same = r.proc.returncode == 0 and equal_states(final_state(w),
                                                   self.straight)
    observed = (f'"{short(skipped[0], 90) if skipped else "no skip line"}", '
                f'resumed at '
                f'{resumed[0].rsplit("/", 1)[1] if resumed else "none"}'
                f', final {"==" if same else "!="} straight')
    prev = TOTAL - EVERY
    return (f'skips {TOTAL}, resumes at {prev}, == straight', observed,
            bool(skipped) and bool(resumed)
            and resumed[0].endswith(f'/{prev}') and same)

  def truncate(self):
    def damage(d):
      f = _largest(d)
      f.write_bytes(f.read_bytes()[:100])
    return self._corrupt('truncate', damage)

  def delete_metadata(self):
    return self._corrupt('delete_metadata',
                         lambda d: (d / 'default' / '_METADATA').unlink())

  def flip_bytes(self):
    def damage(d):
      f = _largest(d)
      data = bytearray(f.read_bytes())
      for i in self.rng.sample(range(len(data)), 64):
        data[i] ^= 0xFF
      f.write_bytes(bytes(data))
    return self._corrupt('flip_bytes', damage)

  # -- refusals -----------------------------------------------------------------

  def concurrent(self):
    w = self.root / 'concurrent'
    first = Run(w, '--config.total_steps=100000')
    _wait_for(lambda: first.steps_logged() >= 1 or first.proc.poll()
              is not None)
    second = run(w)
    first.signal(signal.SIGTERM)
    first.wait()
    line = error_line(second)
    ok = bool(line) and f'pid {first.proc.pid}' in line and \
        first.proc.returncode == 0
    return ('second refused naming the owner', short(
        line or f'exit {second.proc.returncode}: {second.stderr()[-200:]}',
        150), ok)

  def batch_size(self):
    w = self.root / 'batch_size'
    run(w, '--config.total_steps=20')
    record = (w / 'config.json').read_bytes()
    refused = run(w, '--config.batch_size=32')
    line = error_line(refused)
    kept = (w / 'config.json').read_bytes() == record
    allowed = run(w, '--config.batch_size=32',
                  '--config.allow_config_change=batch_size')
    resumed = 'resuming from' in allowed.stdout()
    recorded = json.loads((w / 'config.json').read_text())['batch_size']
    observed = (f'{short(line or "no error line", 100)}; record kept: {kept};'
                f' with override: exit {allowed.proc.returncode}, resumed '
                f'{resumed}, record batch_size {recorded}')
    return ('refused by name; override resumes', observed,
            bool(line) and 'batch_size 64 -> 32' in line and kept
            and allowed.proc.returncode == 0 and resumed and recorded == 32)

  def nan(self):
    w = self.root / 'nan'
    r = run(w, '--config.optim.base_lr=1e6', '--config.checkpoint_every=1')
    line = error_line(r)
    saved = steps_on_disk(w)
    bad = int(line.split(' at step ')[1].split(';')[0]) if line and \
        ' at step ' in line else None
    ok = bool(line) and bad is not None and all(s < bad for s in saved)
    return ('stops before saving the NaN step, exit 1',
            f'{short(line or r.stderr()[-200:], 100)}; saved {saved}', ok)

  def unwritable(self):
    f = self.root / 'a_file'
    f.write_text('x')
    out, ok = [], True
    for w in (f / 'w', pathlib.Path('/proc/vit_jax_w')):
      line = error_line(run(w))
      out.append(short(line or 'no error line', 80))
      ok &= bool(line) and line.startswith(f'error: cannot create workdir {w}')
    return ('one line each, exit 1', '; '.join(out), ok)

  def disk_full(self):
    mnt = self.root / 'tmpfs'
    mnt.mkdir(exist_ok=True)
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2M', 'tmpfs',
                       str(mnt)], capture_output=True).returncode:
      return ('one line; resume == straight', 'not run: cannot mount a '
              'tmpfs (needs root)', None)
    try:
      w = mnt / 'w'
      r = run(w)
      line = error_line(r)
      intact = steps_on_disk(w)
      subprocess.run(['mount', '-o', 'remount,size=16M', str(mnt)],
                     check=True)
      observed = (f'{short(line or r.stderr()[-300:], 120)}; on disk '
                  f'{intact}; room made, ' + self.resumed_equal(w))
      return ('one line, exit 1; resume == straight', observed,
              bool(line) and observed.endswith('== straight'))
    finally:
      subprocess.run(['umount', str(mnt)], check=False)


def _largest(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / 'default').rglob('*') if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def _wait_for(cond, timeout: float = 600, poll: float = 0.05) -> None:
  deadline = time.time() + timeout
  while not cond():
    if time.time() > deadline:
      raise TimeoutError('condition not reached')
    time.sleep(poll)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workroot', default='/tmp/fault_injection')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--cases', default=','.join(CASES))
  args = parser.parse_args(argv)
  cases = [c for c in args.cases.split(',') if c]
  unknown = [c for c in cases if c not in CASES]
  if unknown:
    print(f'error: unknown case(s) {unknown}; allowed: {", ".join(CASES)}',
          file=sys.stderr)
    return 1
  root = pathlib.Path(args.workroot)
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  Run.log_dir = root
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # Orbax's notes while we read back
  t0 = time.time()
  bench = Bench(root, args.seed)
  rows = []
  for case in cases:
    t = time.time()
    try:
      expected, observed, ok = getattr(bench, case)()
    except Exception as e:  # pylint: disable=broad-except
      expected, observed, ok = '', f'{type(e).__name__}: {short(str(e))}', False
    rows.append((case, expected, observed, ok))
    print(f'[{case}: {time.time() - t:.0f}s] {observed}', flush=True)
  print(f'\ndigits, {TOTAL} steps, checkpoint every {EVERY}; seed '
        f'{args.seed}; {time.time() - t0:.0f}s; logs in {root}\n')
  print('| case | expected | observed | ok |\n| --- | --- | --- | --- |')
  for case, expected, observed, ok in rows:
    mark = 'not run' if ok is None else ('yes' if ok else 'NO')
    print(f'| {case} | {expected} | {observed.replace("|", "/")} | {mark} |')
  return 0 if all(ok is not False for _, _, _, ok in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
