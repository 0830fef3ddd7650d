"""The allocator tunables: environment logic and the real re-exec."""

import os
import subprocess
import sys
import textwrap

import pytest

from vit_jax.perf import host_malloc

from tests.conftest import REPO as _REPO
REPO = str(_REPO)


ALL = ':'.join(host_malloc.TUNABLES)


def test_adds_the_tunables_and_keeps_the_users_values():
  assert host_malloc.tuned_environ({})['GLIBC_TUNABLES'] == ALL
  env = host_malloc.tuned_environ(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.cpu.x=1', 'X': '1'})
  tunables = env['GLIBC_TUNABLES'].split(':')
  assert tunables[:2] == ['glibc.malloc.arena_max=2', 'glibc.cpu.x=1']
  assert tunables[2:] == list(host_malloc.TUNABLES[1:])  # not arena_max=1
  assert env['X'] == '1'
  # Without transparent huge pages: everything but glibc.malloc.hugetlb.
  env = host_malloc.tuned_environ({}, huge_pages=False)
  assert env['GLIBC_TUNABLES'] == ':'.join(host_malloc.TUNABLES[:-1])
  assert host_malloc.HUGETLB not in env['GLIBC_TUNABLES']


@pytest.mark.parametrize('environ', [
    {'GLIBC_TUNABLES': ALL},  # already re-executed
    # the user's own values for all of them
    {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=8:glibc.malloc.mmap_max=5:'
                       'glibc.malloc.trim_threshold=1:glibc.malloc.hugetlb=0'},
    {host_malloc.OPT_OUT: '1', 'GLIBC_TUNABLES': ''},
])
def test_leaves_the_environment_alone(environ):
  assert host_malloc.tuned_environ(environ) is None


def test_accelerator_hosts_are_left_alone(tmp_path):
  dev = tmp_path / 'nvidia0'
  check = host_malloc._accelerator_present  # pylint: disable=protected-access
  assert not check({}, files=(str(dev),))
  dev.write_text('')
  assert check({}, files=(str(dev),))
  assert not check({'JAX_PLATFORMS': 'cpu'}, files=(str(dev),))


def _child(tmp_path, env):
  script = tmp_path / 'child.py'
  script.write_text(textwrap.dedent(f"""
      import os, sys
      sys.path.insert(0, {REPO!r})
      print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES', ''),
            flush=True)
      from vit_jax.perf import host_malloc
      host_malloc.maybe_reexec()
      print('after', sys.argv[1:], flush=True)
      """))
  return subprocess.run([sys.executable, str(script), 'a', '--b=c'],
                        env=env, capture_output=True, text=True, check=True,
                        timeout=120).stdout.splitlines()


def test_reexecutes_once_with_the_same_arguments(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', host_malloc.OPT_OUT)}
  lines = _child(tmp_path, env)
  supported = (host_malloc._glibc_has_tunables()  # pylint: disable=protected-access
               and sys.platform.startswith('linux')
               and not host_malloc._accelerator_present(env))  # pylint: disable=protected-access
  if supported:
    # Two starts in the same process (execve keeps the pid), then one run.
    assert len(lines) == 3, lines
    first, second = lines[0].split(), lines[1].split()
    assert first[1] == second[1]
    assert len(first) == 2
    thp = (host_malloc._glibc_has_hugetlb()  # pylint: disable=protected-access
           and host_malloc._thp_available())  # pylint: disable=protected-access
    assert second[2] == (ALL if thp else ':'.join(host_malloc.TUNABLES[:-1]))
  else:
    assert len(lines) == 2, lines
  assert lines[-1] == "after ['a', '--b=c']"


def test_opt_out_runs_without_reexec(tmp_path):
  env = dict(os.environ, **{host_malloc.OPT_OUT: '1'})
  env.pop('GLIBC_TUNABLES', None)
  lines = _child(tmp_path, env)
  assert len(lines) == 2 and lines[-1] == "after ['a', '--b=c']"


_FAULTS = textwrap.dedent("""
    import ctypes, resource, threading
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
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
    print(*out)
    """)


@pytest.mark.skipif(not (sys.platform.startswith('linux')
                         and host_malloc._glibc_has_tunables()),  # pylint: disable=protected-access
                    reason='needs Linux with glibc >= 2.26')
def test_tunables_stop_the_per_step_page_faults():
  def faults(tunables):
    env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
    if tunables:
      env['GLIBC_TUNABLES'] = tunables
    out = subprocess.run([sys.executable, '-c', _FAULTS], env=env,
                         capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    return [int(x) for x in out]
  default = faults('')
  tuned = faults(':'.join(host_malloc.TUNABLES[:-1]))  # 4 KiB pages: countable
  pages = (256 << 20) // 4096
  # Default glibc: every "step" maps the block afresh and faults it all in.
  assert all(f > pages // 2 for f in default), default
  # Tuned: the first step faults it in, later steps reuse it.
  assert tuned[0] > pages // 2 and max(tuned[1:]) < pages // 100, tuned


_RACE = textwrap.dedent("""
    import ctypes, resource, sys
    sys.path.insert(0, {repo!r})
    from vit_jax.perf import host_malloc
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
    """)


@pytest.mark.skipif(not (sys.platform.startswith('linux')
                         and host_malloc._glibc_has_tunables()),  # pylint: disable=protected-access
                    reason='needs Linux with glibc >= 2.26')
def test_reserve_takes_the_page_faults_up_front():
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  env['GLIBC_TUNABLES'] = ':'.join(host_malloc.TUNABLES[:-1])  # 4 KiB pages

  def run(reserve):
    out = subprocess.run(
        [sys.executable, '-c', _RACE.format(repo=REPO), reserve], env=env,
        capture_output=True, text=True, check=True, timeout=120).stdout.split()
    return out[0] == 'True', int(out[1])
  pages = 2 * (128 << 20) // 4096
  reserved, faults = run('no')
  assert not reserved and faults > pages // 2, faults
  reserved, faults = run('yes')
  assert reserved and faults < pages // 100, faults


def test_reserve_needs_the_tunables_and_the_memory(monkeypatch):
  monkeypatch.setenv('GLIBC_TUNABLES', '')
  assert not host_malloc.reserve(1 << 20)
  monkeypatch.setenv('GLIBC_TUNABLES', ':'.join(host_malloc.TUNABLES))
  assert not host_malloc.reserve(1 << 60)  # more than the machine has
  assert not host_malloc.reserve(0)
