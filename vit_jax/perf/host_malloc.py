"""Host allocator settings that make XLA:CPU steps cheaper: keep freed memory.

XLA:CPU allocates an executable's temporary buffer afresh on every call
(2.2 GB for a ViT-Ti/16 training step at batch 32, 4.4 GB for S/16) and frees
it at the end. glibc serves a block that large with a new `mmap` and unmaps
it on free, so every step faults the whole buffer in again and the kernel
zeroes it (ViT-Ti/16 training: ~460 k page faults per step on 4 KiB pages).
`apply()` sets, through glibc's `mallopt`:

  M_ARENA_MAX = 1         one arena: every thread allocates from the main
                          heap, which grows with `brk`;
  M_MMAP_MAX = 0          no `mmap` for large blocks: they come from that heap;
  M_TRIM_THRESHOLD = -1   ((size_t) -1) freed memory at the heap's top is
                          never given back, so the next step reuses it,
                          already faulted in: ~0 faults per steady step.

These are the `GLIBC_TUNABLES` glibc.malloc.arena_max=1, mmap_max=0 and
trim_threshold, set at run time. M_ARENA_MAX only holds for arenas created
afterwards: `apply()` must run before XLA starts its thread pools, i.e.
before the first `jax.devices()` / computation (importing jax is fine). It
is called first thing by `python -m vit_jax.main` (from `config.perf.
host_malloc`) and `python -m vit_jax.perf.bench`. The process's resident
memory then stays at its peak (that of a step, reached every step anyway).
Numerics do not change.

One race remains: XLA frees a step's buffer on a callback that can run just
after the step's outputs are ready, so now and then the next step allocates
its buffer while the last one is still held and the heap grows by a whole
step buffer at that moment (~350 k page faults in one random step).
`reserve(nbytes)` makes that growth happen up front: the benchmarks call it
with twice an executable's temporary size after compiling.

'auto' applies the settings unless the machine has a GPU or TPU (device
files such as /dev/nvidia0, /dev/accel0, /dev/kfd; unless `JAX_PLATFORMS=
cpu`): there the step runs on the accelerator, and one arena would
serialize the many threads of the input pipeline.
"""

import ctypes
import os
import platform
import sys
from typing import Mapping

# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
# The same as environment tunables (for a process started by someone else).
TUNABLES = ('glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
            'glibc.malloc.trim_threshold=18446744073709551615')
MODES = ('auto', 'on', 'off')
ACCELERATOR_DEVICE_FILES = ('/dev/nvidia0', '/dev/accel0', '/dev/kfd')
_applied = False


def _is_glibc() -> bool:
  return sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'


def accelerator_present(environ: Mapping[str, str] = os.environ,
                        files=ACCELERATOR_DEVICE_FILES) -> bool:
  """Whether this machine has a GPU / TPU that JAX may use."""
  if environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu':
    return False
  return any(os.path.exists(f) for f in files)


def wanted(mode: str, environ: Mapping[str, str] = os.environ) -> bool:
  """Whether `mode` ('auto' | 'on' | 'off') asks for the settings here."""
  if mode not in MODES:
    raise ValueError(f'host_malloc={mode!r}; allowed: {", ".join(MODES)}')
  return mode == 'on' or (mode == 'auto' and not accelerator_present(environ))


def apply(mode: str = 'on') -> bool:
  """Sets the allocator parameters (module doc) if `wanted(mode)` and the C
  library is glibc; returns whether they are in effect now."""
  global _applied
  if not wanted(mode) or not _is_glibc():
    return _applied
  libc = ctypes.CDLL(None)
  libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  libc.mallopt.restype = ctypes.c_int
  _applied = all(libc.mallopt(p, v) == 1 for p, v in SETTINGS)
  return _applied


def active() -> bool:
  """Whether this process runs with the settings (by `apply` or by
  `GLIBC_TUNABLES`)."""
  return _applied or 'glibc.malloc.mmap_max=0' in os.environ.get(
      'GLIBC_TUNABLES', '')


def _available_bytes(path: str = '/proc/meminfo') -> int:
  try:
    with open(path) as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return 0


MADV_HUGEPAGE = 14  # <sys/mman.h>


def _heap_range(path: str = '/proc/self/maps') -> tuple[int, int]:
  """(start, end) of the process's brk heap, (0, 0) if none."""
  try:
    with open(path) as f:
      for line in f:
        if line.rstrip().endswith('[heap]'):
          lo, hi = line.split()[0].split('-')
          return int(lo, 16), int(hi, 16)
  except OSError:
    pass
  return 0, 0


def reserve(nbytes: int, max_fraction: float = 0.5,
            huge_pages: bool = False) -> bool:
  """Grows the heap to hold `nbytes` more, touched, then frees it (kept).

  With the settings active freed heap memory stays mapped, so later
  allocations up to that size take no page faults. `huge_pages`: before
  touching it, ask the kernel for transparent huge pages on the whole heap
  (`madvise(MADV_HUGEPAGE)`; needs THP 'madvise' or 'always'). Does nothing
  (returns False) without the settings or when `nbytes` exceeds
  `max_fraction` of the available memory.
  """
  if nbytes <= 0 or not active() or (
      nbytes > max_fraction * _available_bytes()):
    return False
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  block = libc.malloc(nbytes)
  if not block:
    return False
  if huge_pages:
    lo, hi = _heap_range()
    if hi > lo:
      libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
      libc.madvise(lo, hi - lo, MADV_HUGEPAGE)
  ctypes.memset(block, 0, nbytes)
  libc.free(block)
  return True


def minor_faults() -> int:
  """Minor page faults of this process so far."""
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def describe() -> str:
  """One phrase for logs: what the allocator does in this process."""
  return ('glibc malloc: one arena, no mmap, no trim' if active()
          else 'glibc malloc: defaults')
