"""The huge-page allocator setting: environment logic and the real re-exec."""

import os
import subprocess
import sys
import textwrap

import pytest

from vit_jax import host_malloc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_adds_the_tunable_and_keeps_the_users_tunables():
  assert host_malloc.tuned_environ({})['GLIBC_TUNABLES'] == host_malloc.TUNABLE
  env = host_malloc.tuned_environ(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'X': '1'})
  assert env['GLIBC_TUNABLES'] == (
      f'glibc.malloc.arena_max=2:{host_malloc.TUNABLE}')
  assert env['X'] == '1'


@pytest.mark.parametrize('environ', [
    {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'},  # the user's own choice
    {'GLIBC_TUNABLES': host_malloc.TUNABLE},        # already re-executed
    {host_malloc.OPT_OUT: '1'},
])
def test_leaves_the_environment_alone(environ):
  assert host_malloc.tuned_environ(environ) is None


def test_thp_switched_off_is_detected(tmp_path):
  f = tmp_path / 'enabled'
  f.write_text('always madvise [never]\n')
  assert not host_malloc._thp_available(str(f))  # pylint: disable=protected-access
  f.write_text('always [madvise] never\n')
  assert host_malloc._thp_available(str(f))  # pylint: disable=protected-access
  assert not host_malloc._thp_available(str(tmp_path / 'absent'))  # pylint: disable=protected-access


def _child(tmp_path, env):
  script = tmp_path / 'child.py'
  script.write_text(textwrap.dedent(f"""
      import os, sys
      sys.path.insert(0, {REPO!r})
      print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES', ''),
            flush=True)
      from vit_jax import host_malloc
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
  supported = (host_malloc._glibc_supports_hugetlb()  # pylint: disable=protected-access
               and host_malloc._thp_available()  # pylint: disable=protected-access
               and sys.platform.startswith('linux'))
  if supported:
    # Two starts in the same process (execve keeps the pid), then one run.
    assert len(lines) == 3, lines
    first, second = lines[0].split(), lines[1].split()
    assert first[1] == second[1]
    assert len(first) == 2 and second[2] == host_malloc.TUNABLE
  else:
    assert len(lines) == 2, lines
  assert lines[-1] == "after ['a', '--b=c']"


def test_opt_out_runs_without_reexec(tmp_path):
  env = dict(os.environ, **{host_malloc.OPT_OUT: '1'})
  env.pop('GLIBC_TUNABLES', None)
  lines = _child(tmp_path, env)
  assert len(lines) == 2 and lines[-1] == "after ['a', '--b=c']"
