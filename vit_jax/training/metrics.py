"""Metric output: TensorBoard event files in the workdir, stdout, progress.

Only process 0 writes. `MetricWriter.write(step, {...})` logs scalars to
`WORKDIR/tensorboard/` (`event_file`: no TensorFlow needed, `gs://` workdirs
work; view them with `tensorboard --logdir WORKDIR/tensorboard`);
`last_scalars` reads the newest values back (the final eval of a finished
run). `Progress` measures img/s and
the ETA between log lines, from the first step after compilation on.
"""

import logging
import time
from typing import Mapping, Optional

import jax
from vit_jax.training import event_file

TENSORBOARD_DIR = 'tensorboard'


class MetricWriter:
  """Scalars to TensorBoard and stdout (no-op on processes other than 0)."""

  def __init__(self, workdir: str):
    self._writer = None
    if jax.process_index() == 0:
      self._writer = event_file.EventFileWriter(
          f'{workdir}/{TENSORBOARD_DIR}')

  def write(self, step: int, scalars: Mapping[str, float],
            prefix: str = '') -> None:
    if self._writer is None:
      return
    self._writer.scalars(step, {prefix + k: v for k, v in scalars.items()})
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def last_scalars(workdir: str, prefix: str) -> Optional[dict[str, float]]:
  """{'step': S, name: value, ...}: the scalars `prefix`+name that
  `MetricWriter` wrote at the highest step S of `WORKDIR/tensorboard` (all
  event files; prefix removed), or None when there are none."""
  pattern = f'{workdir}/{TENSORBOARD_DIR}/events.out.tfevents.*'
  found: dict[int, dict[str, float]] = {}
  for path in event_file.glob(pattern):
    for event in event_file.read_events(path):
      for v in event.summary.value:
        if v.tag.startswith(prefix):
          found.setdefault(event.step, {})[v.tag[len(prefix):]] = (
              event_file.value_float(v))
  if not found:
    return None
  step = max(found)
  return {'step': step, **found[step]}


def fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class Progress:
  """Throughput and ETA from the steps done since the previous call.

  The first step of a run compiles the step function; call `restart(step)`
  once it is done so that no figure includes the compilation (until then
  `update` returns None).
  """

  def __init__(self, total_steps: int, batch_size: int, start_step: int):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._step, self._time = start_step, time.perf_counter()
    self._start_time = self._time
    self._started = False
    self.compile_sec = 0.0

  def restart(self, step: int) -> None:
    """Measures from now on (`step` done; the time until now is compile)."""
    now = time.perf_counter()
    self.compile_sec = now - self._time
    self._step, self._time, self._started = step, now, True

  def update(self, step: int) -> Optional[dict[str, float]]:
    """{'img_per_sec', 'eta_sec', 'elapsed_sec'} since the previous call,
    or None before `restart` or when no step was done since."""
    now = time.perf_counter()
    if not self._started or step <= self._step:
      self._time = now if self._started else self._time
      return None
    sec_per_step = (now - self._time) / (step - self._step)
    self._step, self._time = step, now
    return {'img_per_sec': self.batch_size / max(sec_per_step, 1e-9),
            'eta_sec': sec_per_step * (self.total_steps - step),
            'elapsed_sec': now - self._start_time}


def log(msg: str) -> None:
  """One line to stdout (process 0 only) and the absl/python log."""
  if jax.process_index() == 0:
    print(msg, flush=True)
  logging.info(msg)
