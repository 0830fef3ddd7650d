"""Decisions shared by every process of a run.

`from_process_0(fn)` runs `fn()` on process 0 only (a lock, a file check)
and returns its text on every process; a `ValueError` raised by `fn` is
raised on every process with the same one-line message. It is a collective
(`multihost_utils.broadcast_one_to_all`), so every process must call it,
and it doubles as a barrier. With one process it is just `fn()`.

`any_process(flag)` is true on every process when `flag` is true on at least
one (a stop asked of one process); also a collective.
"""

from typing import Callable

import jax
from jax.experimental import multihost_utils
import numpy as np

MAX_BYTES = 4096  # longer texts are cut
_ERROR = '\x00error\x00'


def from_process_0(fn: Callable[[], str]) -> str:
  """`fn()` of process 0 (a str of at most MAX_BYTES UTF-8 bytes)."""
  if jax.process_count() == 1:
    return fn()
  text = ''
  if jax.process_index() == 0:
    try:
      text = fn()
    except ValueError as e:
      text = _ERROR + str(e)
  data = np.zeros(MAX_BYTES + 1, np.int32)
  raw = text.encode()[:MAX_BYTES]
  data[0] = len(raw)
  data[1:1 + len(raw)] = np.frombuffer(raw, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  text = bytes(data[1:1 + data[0]].astype(np.uint8)).decode(errors='replace')
  if text.startswith(_ERROR):
    raise ValueError(text[len(_ERROR):])
  return text


def any_process(flag: bool) -> bool:
  """True on every process iff `flag` is true on some process (collective:
  every process must call it; one int32 per process is gathered)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray([int(bool(flag))],
                                                       np.int32))
  return bool(np.asarray(flags).max())
