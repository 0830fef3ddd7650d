"""Host allocator setting that makes XLA:CPU steps cheaper: huge pages.

XLA:CPU allocates an executable's temporary buffer afresh on every call
(4.4 GB for a ViT-S/16 training step at batch 32). glibc serves blocks that
large with a new `mmap`, so every step faults the whole buffer in, 4 KiB at
a time: 1.6 M page faults per step, about 15 % of the step on the 2-core
machine of docs/performance.md. glibc's tunable `glibc.malloc.hugetlb=1`
(glibc >= 2.35) makes malloc advise transparent huge pages for its mappings
(`madvise(MADV_HUGEPAGE)`; 2 MiB pages, ~100x fewer faults). Numerics do not
change.

Tunables are read when a process starts, so `maybe_reexec()` re-executes the
interpreter once, with the same command line and the tunable added to
`GLIBC_TUNABLES`. It is called first thing by the command-line entry points
(`python -m vit_jax.main`, `vit_jax.bench`, and `benchmarks/` timm_side_by_side.py,
scaling.py, profile_step.py),
never on import. It does nothing when the tunable is already there, when
`VIT_JAX_NO_HUGEPAGES=1`, when the C library is not glibc >= 2.35, or when
transparent huge pages are switched off (`never`) on the machine.
"""

import os
import platform
import sys
from typing import Mapping, Optional

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'VIT_JAX_NO_HUGEPAGES'
_THP = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_supports_hugetlb() -> bool:
  lib, version = platform.libc_ver()
  if lib != 'glibc':
    return False
  try:
    major, minor = (int(p) for p in version.split('.')[:2])
  except ValueError:
    return False
  return (major, minor) >= (2, 35)


def _thp_available(path: str = _THP) -> bool:
  try:
    with open(path) as f:
      return '[never]' not in f.read()
  except OSError:
    return False


def tuned_environ(environ: Mapping[str, str]) -> Optional[dict[str, str]]:
  """`environ` with the tunable added, or None when nothing should change."""
  if environ.get(OPT_OUT, '') not in ('', '0'):
    return None
  current = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb=' in current:
    return None  # set (to anything) by the user or by our own re-exec
  env = dict(environ)
  env['GLIBC_TUNABLES'] = f'{current}:{TUNABLE}' if current else TUNABLE
  return env


def maybe_reexec() -> None:
  """Re-executes this process with huge pages for malloc, if useful (above).

  Call before importing jax; returns normally when nothing is to be done.
  """
  if not sys.platform.startswith('linux') or not _glibc_supports_hugetlb():
    return
  if not _thp_available():
    return
  env = tuned_environ(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, list(sys.orig_argv), env)
