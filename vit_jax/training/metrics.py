"""Metric output: TensorBoard event files in the workdir, stdout, progress.

Only process 0 writes. `MetricWriter.write(step, {...})` logs scalars to
`WORKDIR/tensorboard/` (tf.summary, so `gs://` workdirs work) and one line to
stdout; `Progress` measures img/s and the ETA between log lines.
"""

import logging
import time
from typing import Mapping

import jax


class MetricWriter:
  """Scalars to TensorBoard and stdout (no-op on processes other than 0)."""

  def __init__(self, workdir: str):
    self._writer = None
    if jax.process_index() == 0:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.set_visible_devices([], 'GPU')
      self._tf = tf
      self._writer = tf.summary.create_file_writer(f'{workdir}/tensorboard')

  def write(self, step: int, scalars: Mapping[str, float],
            prefix: str = '') -> None:
    if self._writer is None:
      return
    tf = self._tf
    # tf.summary.write with the 'scalars' plugin tag is what
    # tensorboard's tf.summary.scalar does; it needs no tensorboard package.
    meta = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(
            plugin_name='scalars'))
    with self._writer.as_default():
      for k, v in scalars.items():
        tf.summary.write(prefix + k, tf.constant(float(v), tf.float32),
                         step=step, metadata=meta)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class Progress:
  """Throughput and ETA from the steps done since the previous call."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._step, self._time = start_step, time.perf_counter()
    self._start_time = self._time

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps = max(step - self._step, 1)
    sec_per_step = (now - self._time) / steps
    self._step, self._time = step, now
    return {'img_per_sec': self.batch_size / max(sec_per_step, 1e-9),
            'eta_sec': sec_per_step * (self.total_steps - step),
            'elapsed_sec': now - self._start_time}


def log(msg: str) -> None:
  """One line to stdout (process 0 only) and the absl/python log."""
  if jax.process_index() == 0:
    print(msg, flush=True)
  logging.info(msg)
