"""Event files without TensorFlow, checked against TensorFlow's own reader
and writer (tf.data.TFRecordDataset verifies both checksums of each
record) and the CRC-32C check value of RFC 3720."""

import subprocess
import sys

import numpy as np
import pytest

from vit_jax.training import event_file

tf = pytest.importorskip('tensorflow')


def test_crc32c_check_values():
  assert event_file.crc32c(b'123456789') == 0xE3069283  # RFC 3720, B.4
  assert event_file.crc32c(b'') == 0
  assert event_file.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4


def test_our_file_is_read_by_tensorflow(tmp_path):
  w = event_file.EventFileWriter(str(tmp_path))
  w.scalars(3, {'train/loss': 2.5, 'eval/top1': 0.125})
  w.scalars(7, {'train/loss': 1.25})
  w.close()
  events = [tf.compat.v1.Event.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(w.path)]
  assert events[0].file_version == 'brain.Event:2'
  got = [(e.step, v.tag, float(tf.make_ndarray(v.tensor)),
          v.metadata.plugin_data.plugin_name)
         for e in events[1:] for v in e.summary.value]
  assert got == [(3, 'train/loss', 2.5, 'scalars'),
                 (3, 'eval/top1', 0.125, 'scalars'),
                 (7, 'train/loss', 1.25, 'scalars')]


def test_tensorflows_file_is_read_by_ours(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    for step, value in [(1, 0.5), (2, np.float32(1 / 3))]:
      tf.summary.scalar('loss', value, step=step)
  writer.close()
  (path,) = event_file.glob(f'{tmp_path}/events.out.tfevents.*')
  got = [(e.step, v.tag, event_file.value_float(v))
         for e in event_file.read_events(path) for v in e.summary.value]
  assert got == [(1, 'loss', 0.5), (2, 'loss', float(np.float32(1 / 3)))]


def test_a_file_cut_short_or_corrupted_yields_the_complete_records(tmp_path):
  w = event_file.EventFileWriter(str(tmp_path))
  for step in range(1, 4):
    w.scalars(step, {'x': float(step)})
  w.close()
  data = open(w.path, 'rb').read()
  cut = tmp_path / 'cut'
  cut.write_bytes(data[:-3])
  steps = [e.step for e in event_file.read_events(str(cut)) if e.summary.value]
  assert steps == [1, 2]
  flipped = bytearray(data)
  flipped[-6] ^= 1  # inside the last record's data
  bad = tmp_path / 'bad'
  bad.write_bytes(bytes(flipped))
  steps = [e.step for e in event_file.read_events(str(bad)) if e.summary.value]
  assert steps == [1, 2]


def test_writing_loads_no_tensorflow(tmp_path):
  code = ('import sys; from vit_jax.training import event_file; '
          f'w = event_file.EventFileWriter({str(tmp_path)!r}); '
          "w.scalars(1, {'a': 1.0}); w.close(); "
          "print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == 'False'
