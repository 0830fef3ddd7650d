"""Host allocator settings that make XLA:CPU steps cheaper: keep freed memory.

XLA:CPU allocates an executable's temporary buffer afresh on every call
(2.2 GB for a ViT-Ti/16 training step at batch 32, 4.4 GB for S/16) and frees
it at the end. glibc serves a block that large with a new `mmap` (from the
worker thread's own arena, whatever `M_MMAP_THRESHOLD` says) and unmaps it on
free, so every step faults the whole buffer in again and the kernel zeroes
it: 1.6 M page faults per S/16 step (about 15 % of the step on the 2-core
machine of docs/performance.md). The glibc tunables `TUNABLES` keep that
memory instead:

  glibc.malloc.arena_max=1       one arena: every thread allocates from the
                                 main heap, which grows with `brk`;
  glibc.malloc.mmap_max=0        no `mmap` for large blocks: they come from
                                 that heap;
  glibc.malloc.trim_threshold=   freed memory at the heap's top is not given
                                 back, so the next step reuses it, already
                                 faulted in: 0 faults and 0.02-0.04 s of
                                 system time per step (measured, Ti/16 and
                                 S/16 training);
  glibc.malloc.hugetlb=1         (glibc >= 2.35, transparent huge pages not
                                 `never`) 2 MiB pages for the heap: fewer
                                 TLB misses on large activations (ViT-B/16
                                 inference at 384 px: 29.3 -> 26.6 s per
                                 batch of 32). Its cost: S/16 training steps
                                 still take ~300 faults (0.4-0.8 s of system
                                 time) and now and then a 3 s stall, which
                                 the kernel's `defrag=madvise` compaction
                                 likely causes; same median step time.

The process's resident memory then stays at its peak (the peak of a step,
which it reaches every step anyway). Numerics do not change.

One race remains: XLA frees a step's buffer on a callback that can run just
after the step's outputs are ready, so now and then the next step allocates
its buffer while the last one is still held, and the heap grows by a whole
step buffer (1.4 GB for Ti/16 training) at that moment: ~350 k page faults,
3-4 s of system time on the 2-core VM of docs/performance.md, in one random
step. `reserve(nbytes)` makes that growth happen up front: the benchmarks
call it with twice an executable's temporary size after compiling.

Tunables are read when a process starts, so `maybe_reexec()` re-executes the
interpreter once, with the same command line and the tunables added to
`GLIBC_TUNABLES` (a tunable the user already set keeps the user's value). It
is called first thing by the command-line entry points (`python -m
vit_jax.main`, `vit_jax.perf.bench`, and `benchmarks/` timm_side_by_side.py,
scaling.py, profile_step.py), never on import. It does nothing when all the
tunables are already there, when `VIT_JAX_DEFAULT_MALLOC=1`, when the C
library is not glibc >= 2.26, or when the machine has a GPU or TPU (device
files such as /dev/nvidia0, /dev/accel0, /dev/kfd; unless `JAX_PLATFORMS=cpu`):
there the step runs on the accelerator, and one arena would serialize the
many threads of the input pipeline.
"""

import ctypes
import os
import platform
import sys
from typing import Mapping, Optional

TUNABLES = (
    'glibc.malloc.arena_max=1',
    'glibc.malloc.mmap_max=0',
    'glibc.malloc.trim_threshold=68719476736',  # 64 GiB: never trim
    'glibc.malloc.hugetlb=1',  # glibc >= 2.35, where THP is not `never`
)
HUGETLB = TUNABLES[-1]
_THP = '/sys/kernel/mm/transparent_hugepage/enabled'
OPT_OUT = 'VIT_JAX_DEFAULT_MALLOC'
ACCELERATOR_DEVICE_FILES = ('/dev/nvidia0', '/dev/accel0', '/dev/kfd')


def _glibc_at_least(major: int, minor: int) -> bool:
  lib, version = platform.libc_ver()
  try:
    return lib == 'glibc' and tuple(
        int(p) for p in version.split('.')[:2]) >= (major, minor)
  except ValueError:
    return False


def _glibc_has_tunables() -> bool:
  return _glibc_at_least(2, 26)


def _glibc_has_hugetlb() -> bool:
  return _glibc_at_least(2, 35)


def _thp_available(path: str = _THP) -> bool:
  try:
    with open(path) as f:
      return '[never]' not in f.read()
  except OSError:
    return False


def _accelerator_present(environ: Mapping[str, str],
                         files=ACCELERATOR_DEVICE_FILES) -> bool:
  if environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu':
    return False
  return any(os.path.exists(f) for f in files)


def tuned_environ(environ: Mapping[str, str], huge_pages: bool = True
                  ) -> Optional[dict[str, str]]:
  """`environ` with the tunables added, or None when nothing should change.

  A tunable already in `GLIBC_TUNABLES` (the user's, or our own re-exec's)
  keeps its value; `huge_pages=False` leaves out `glibc.malloc.hugetlb`.
  """
  if environ.get(OPT_OUT, '') not in ('', '0'):
    return None
  current = environ.get('GLIBC_TUNABLES', '')
  present = {t.split('=')[0] for t in current.split(':') if t}
  wanted = [t for t in TUNABLES if huge_pages or t != HUGETLB]
  missing = [t for t in wanted if t.split('=')[0] not in present]
  if not missing:
    return None
  env = dict(environ)
  env['GLIBC_TUNABLES'] = ':'.join(([current] if current else []) + missing)
  return env


def maybe_reexec() -> None:
  """Re-executes this process with the allocator tunables (above), if useful.

  Call before importing jax; returns normally when nothing is to be done.
  """
  if not sys.platform.startswith('linux') or not _glibc_has_tunables():
    return
  if _accelerator_present(os.environ):
    return
  env = tuned_environ(os.environ,
                      huge_pages=_glibc_has_hugetlb() and _thp_available())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)


def active() -> bool:
  """Whether this process runs under the tunables (heap only, never trimmed)."""
  return 'glibc.malloc.mmap_max=0' in os.environ.get('GLIBC_TUNABLES', '')


def _available_bytes(path: str = '/proc/meminfo') -> int:
  try:
    with open(path) as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return 0


def reserve(nbytes: int, max_fraction: float = 0.5) -> bool:
  """Grows the heap to hold `nbytes` more, touched, then frees it (kept).

  Under the tunables freed heap memory stays mapped, so later allocations up
  to that size take no page faults. Does nothing (returns False) without the
  tunables or when `nbytes` exceeds `max_fraction` of the available memory.
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
  ctypes.memset(block, 0, nbytes)
  libc.free(block)
  return True
