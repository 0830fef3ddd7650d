"""TensorBoard event files, written and read without TensorFlow.

An event file is a TFRecord file of `Event` protos (tensorboard's own
`tensorboard.compat.proto`, which import no TensorFlow). Each record is

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

little-endian, with CRC-32C (Castagnoli) masked as TFRecord masks it:
((crc >> 15 | crc << 17) + 0xa282ead8) mod 2^32. The first event carries
`file_version='brain.Event:2'`; a scalar is a float32 tensor summary with the
'scalars' plugin tag, what `tf.summary.scalar` writes, so `tensorboard
--logdir` and `tf.data.TFRecordDataset` read these files as theirs.

Local paths use Python's files. A path with a scheme (`gs://...`) goes
through `tf.io.gfile`, so TensorFlow is loaded only for such workdirs.
"""

import os
import socket
import struct
import time
from typing import BinaryIO, Iterator

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import types_pb2

_CRC32C_POLY = 0x82F63B78  # reversed Castagnoli polynomial
_CRC_TABLE = []
for _n in range(256):
  _c = _n
  for _ in range(8):
    _c = (_c >> 1) ^ _CRC32C_POLY if _c & 1 else _c >> 1
  _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
  """CRC-32C of `data` (RFC 3720's check value: crc32c(b'123456789') =
  0xE3069283)."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _open(path: str, mode: str) -> BinaryIO:
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)  # pylint: disable=unspecified-encoding


def _makedirs(path: str) -> None:
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def glob(pattern: str) -> list[str]:
  """Files matching `pattern`, sorted."""
  if '://' in pattern:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return sorted(tf.io.gfile.glob(pattern))
  import glob as glob_lib  # pylint: disable=g-import-not-at-top
  return sorted(glob_lib.glob(pattern))


def scalar_value(tag: str, value: float) -> summary_pb2.Summary.Value:
  """A float32 scalar summary value, as `tf.summary.scalar` writes it."""
  tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                  float_val=[float(value)])
  meta = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(
          plugin_name='scalars'))
  return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta)


class EventFileWriter:
  """Appends events to a new `events.out.tfevents.*` file in `logdir`."""

  def __init__(self, logdir: str):
    _makedirs(logdir)
    now = time.time()
    self.path = (f'{logdir}/events.out.tfevents.{int(now)}.'
                 f'{socket.gethostname()}.{os.getpid()}.0.v2')
    self._file = _open(self.path, 'wb')
    self.add(event_pb2.Event(wall_time=now, file_version='brain.Event:2'))

  def add(self, event: event_pb2.Event) -> None:
    data = event.SerializeToString()
    length = struct.pack('<Q', len(data))
    self._file.write(length + struct.pack('<I', masked_crc32c(length)) +
                     data + struct.pack('<I', masked_crc32c(data)))

  def scalars(self, step: int, scalars: dict[str, float]) -> None:
    """One event at `step` holding every tag -> value of `scalars`."""
    summary = summary_pb2.Summary(
        value=[scalar_value(k, v) for k, v in scalars.items()])
    self.add(event_pb2.Event(wall_time=time.time(), step=int(step),
                             summary=summary))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def read_events(path: str) -> Iterator[event_pb2.Event]:
  """The events of one file, in order; stops quietly at a record cut short
  or failing its checksum (a file still being written, or a crash)."""
  with _open(path, 'rb') as f:
    data = f.read()
  pos = 0
  while pos + 12 <= len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack('<Q', header)
    (crc,) = struct.unpack('<I', data[pos + 8:pos + 12])
    end = pos + 12 + length + 4
    if crc != masked_crc32c(header) or end > len(data):
      return
    body = data[pos + 12:pos + 12 + length]
    (crc,) = struct.unpack('<I', data[end - 4:end])
    if crc != masked_crc32c(body):
      return
    yield event_pb2.Event.FromString(body)
    pos = end


def value_float(value: summary_pb2.Summary.Value) -> float:
  """The number of a scalar summary value (tensor or legacy simple_value)."""
  if value.HasField('tensor'):
    t = value.tensor
    if t.float_val:
      return float(t.float_val[0])
    if t.double_val:
      return float(t.double_val[0])
    if t.dtype == types_pb2.DT_FLOAT and len(t.tensor_content) == 4:
      return struct.unpack('<f', t.tensor_content)[0]
    if t.dtype == types_pb2.DT_DOUBLE and len(t.tensor_content) == 8:
      return struct.unpack('<d', t.tensor_content)[0]
    raise ValueError(f'summary {value.tag!r}: not a float scalar tensor')
  return float(value.simple_value)
