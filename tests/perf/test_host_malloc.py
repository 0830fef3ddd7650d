"""vit_jax.perf.host_malloc: glibc's allocator set at run time (`mallopt`)
keeps freed step buffers, so later steps take no page faults. Each check
runs in a fresh interpreter: the settings must come before any thread."""

import os
import subprocess
import sys
import textwrap

import pytest

from vit_jax.perf import host_malloc

from tests.conftest import REPO

GLIBC = host_malloc._is_glibc()  # pylint: disable=protected-access
needs_glibc = pytest.mark.skipif(not GLIBC, reason='needs Linux with glibc')


def _python(code: str, *args: str) -> list[str]:
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  return subprocess.run([sys.executable, '-c', code, *args], env=env,
                        capture_output=True, text=True, check=True,
                        timeout=300, cwd=REPO).stdout.split()


_STEPS = textwrap.dedent("""
    import ctypes, resource, sys, threading
    sys.path.insert(0, {repo!r})
    from vit_jax.perf import host_malloc
    applied = host_malloc.apply(sys.argv[1])
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    n = 256 << 20
    out = []
    def steps():  # what XLA:CPU does per call: a big temporary, from a worker
      for i in range(3):
        p = libc.malloc(n)
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(p, 1, n)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
        libc.free(p)
    t = threading.Thread(target=steps); t.start(); t.join()
    print(applied, host_malloc.active(), *out)
    """).format(repo=str(REPO))


@needs_glibc
def test_mallopt_stops_the_per_step_page_faults():
  pages = (256 << 20) // 4096
  applied, active, *default = _python(_STEPS, 'off')
  assert (applied, active) == ('False', 'False')
  default = [int(f) for f in default]
  # Default glibc: every "step" maps the block afresh and faults it all in.
  assert all(f > pages // 2 for f in default), default
  applied, active, *tuned = _python(_STEPS, 'on')
  assert (applied, active) == ('True', 'True')
  tuned = [int(f) for f in tuned]
  # Set: the first step faults it in, later steps reuse it.
  assert tuned[0] > pages // 2 and max(tuned[1:]) < pages // 100, tuned


_XLA = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {repo!r})
    from vit_jax.perf import host_malloc
    host_malloc.apply(sys.argv[1])
    import jax, jax.numpy as jnp
    a = jnp.ones((8192, 4096), jnp.float32)
    v = jnp.ones((4096, 1), jnp.float32)
    # sin(a) is a 128 MiB temporary of the step (the product reads it)
    f = jax.jit(lambda a, v: (jnp.sin(a) @ v).sum()).lower(a, v).compile()
    host_malloc.reserve(2 * f.memory_analysis().temp_size_in_bytes)
    faults = []
    for _ in range(6):
      r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(a, v).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    print(*faults[1:])
    """).format(repo=str(REPO))


@needs_glibc
def test_xla_steps_take_no_page_faults_with_the_settings():
  """The same with XLA:CPU's own temporary buffer (128 MiB), the settings
  applied after importing jax but before its first computation, as `python
  -m vit_jax.main` does. A step now and then still faults the buffer in
  (the race of the module doc; on a loaded machine, such as a parallel test
  run, most steps can), so the fastest step is judged: without the settings
  every step faults it in."""
  pages = (128 << 20) // 4096
  default = sorted(int(f) for f in _python(_XLA, 'off'))
  tuned = sorted(int(f) for f in _python(_XLA, 'on'))
  assert default[0] > pages // 2, default
  assert tuned[0] < pages // 20, tuned


def test_modes_and_accelerators():
  assert host_malloc.wanted('on') and not host_malloc.wanted('off')
  cpu = {'JAX_PLATFORMS': 'cpu'}
  assert host_malloc.wanted('auto', cpu)
  present = host_malloc.accelerator_present
  assert not present({}, files=('/nonexistent',))
  assert present({}, files=(str(REPO),))  # any existing path stands in
  assert not present(cpu, files=(str(REPO),))  # JAX told to use the CPU
  with pytest.raises(ValueError, match="host_malloc='always'; allowed: "
                     'auto, on, off'):
    host_malloc.wanted('always')


_RACE = textwrap.dedent("""
    import ctypes, resource, sys
    sys.path.insert(0, {repo!r})
    from vit_jax.perf import host_malloc
    host_malloc.apply('on')
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    n = 128 << 20
    reserved = host_malloc.reserve(2 * n) if sys.argv[1] == 'yes' else False
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    # A step's buffer allocated while the last one is still held.
    last, this = libc.malloc(n), libc.malloc(n)
    ctypes.memset(last, 1, n)
    ctypes.memset(this, 1, n)
    print(reserved, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    """).format(repo=str(REPO))


@needs_glibc
def test_reserve_takes_the_page_faults_up_front():
  pages = 2 * (128 << 20) // 4096
  reserved, faults = _python(_RACE, 'no')
  assert reserved == 'False' and int(faults) > pages // 2, faults
  reserved, faults = _python(_RACE, 'yes')
  assert reserved == 'True' and int(faults) < pages // 100, faults


def test_reserve_needs_the_settings_and_the_memory(monkeypatch):
  monkeypatch.setattr(host_malloc, '_applied', False)
  monkeypatch.setenv('GLIBC_TUNABLES', '')
  assert not host_malloc.reserve(1 << 20)
  monkeypatch.setattr(host_malloc, '_applied', True)
  assert not host_malloc.reserve(1 << 60)  # more than the machine has
  assert not host_malloc.reserve(0)
