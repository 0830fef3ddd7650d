"""The package as `pip install .` installs it: a wheel built from a copy of
the sources, installed (without dependencies, offline: this environment
already has them) into a temporary folder, and every `python -m vit_jax...`
entry point run from another directory; `--config=configs/cpu.py:digits`
resolves to the installed copy of configs/. Also: pyproject.toml lists every
package, the requirements files list the same dependencies, every flag of
the argparse entry points is described, and the list flags of the analyses
fail with one line."""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from vit_jax import predict
from vit_jax.analysis import cli as analysis_cli
from vit_jax.perf import bench

REPO = pathlib.Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip('tomllib')  # Python >= 3.11
PYPROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())


def _requirements(path: pathlib.Path) -> list[str]:
  lines = [l.split('#', 1)[0].strip() for l in path.read_text().splitlines()]
  return [l for l in lines if l and not l.startswith('-r ')]


def test_requirements_files_list_the_pyproject_dependencies():
  project = PYPROJECT['project']
  assert _requirements(REPO / 'requirements.txt') == project['dependencies']
  assert _requirements(REPO / 'requirements-test.txt') == (
      project['optional-dependencies']['test'])
  assert '-r requirements.txt' in (REPO / 'requirements-test.txt').read_text()


def test_pyproject_lists_every_package():
  folders = sorted('.'.join(p.parent.relative_to(REPO).parts)
                   for p in (REPO / 'vit_jax').rglob('__init__.py'))
  setuptools = PYPROJECT['tool']['setuptools']
  assert sorted(setuptools['packages']) == sorted(folders + ['vit_jax.configs'])
  assert setuptools['package-dir'] == {'vit_jax.configs': 'configs'}
  for package, files in setuptools['package-data'].items():
    folder = REPO.joinpath(*package.split('.'))
    assert all((folder / f).is_file() for f in files)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(site folder, environment, working directory outside the checkout)."""
  tmp = tmp_path_factory.mktemp('install')
  src = tmp / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(REPO / name, src / name)
  for name in ('vit_jax', 'configs'):
    shutil.copytree(REPO / name, src / name,
                    ignore=shutil.ignore_patterns('__pycache__'))
  pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check']
  subprocess.run([*pip, 'wheel', '--no-deps', '--no-build-isolation',
                  '--no-index', '-q', '-w', str(tmp / 'dist'), str(src)],
                 check=True, timeout=120, cwd=tmp)
  [wheel] = (tmp / 'dist').glob('vit_jax-*.whl')
  site = tmp / 'site'
  subprocess.run([*pip, 'install', '--no-deps', '--no-index', '-q',
                  '--target', str(site), str(wheel)], check=True, timeout=120,
                 cwd=tmp)
  cwd = tmp / 'elsewhere'
  cwd.mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PYTHONPATH=str(site), JAX_PLATFORMS='cpu')
  return site, env, cwd


def _run(installed, *args, timeout=240):
  _, env, cwd = installed
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_import_gives_the_installed_package(installed):
  site = installed[0]
  proc = _run(installed, '-c', 'import vit_jax, vit_jax.configs.common as c; '
              'print(vit_jax.__file__); print(c.__file__)')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == [str(site / 'vit_jax' / '__init__.py'),
                                 str(site / 'vit_jax' / 'configs' /
                                     'common.py')]
  assert (site / 'vit_jax' / 'perf' / 'cpu_gemm.cc').is_file()


def test_readme_config_resolves_from_another_directory(installed):
  """`configs/cpu.py:digits` is not in the working directory: the installed
  copy is loaded (its presets, `from configs import common`) and validated,
  which refuses total_steps=0 before any work."""
  site, _, cwd = installed
  proc = _run(installed, '-m', 'vit_jax.main', '--config=configs/cpu.py:digits',
              '--config.total_steps=0', f'--workdir={cwd / "w"}')
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      'error: config.total_steps=0 must be positive']
  assert not (cwd / 'w').exists()
  proc = _run(installed, '-m', 'vit_jax.main', '--help')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f'then in {site / "vit_jax" / "configs"}' in ' '.join(
      proc.stdout.split())
  assert 'digits (digits, 300 steps)' in ' '.join(proc.stdout.split())


ENTRY_POINTS = {
    'vit_jax.predict': 'usage: python -m vit_jax.predict',
    'vit_jax.perf.bench': 'usage: python -m vit_jax.perf.bench',
    'vit_jax.analysis': 'usage: python -m vit_jax.analysis',
    'vit_jax.checkpoints': 'usage: python -m vit_jax.checkpoints',
    'vit_jax.data.input_pipeline': 'usage: ',
}


def test_every_entry_point_has_help_from_another_directory(installed):
  """All at once (each mostly imports jax / TensorFlow)."""
  _, env, cwd = installed
  procs = {m: subprocess.Popen([sys.executable, '-m', m, '--help'], cwd=cwd,
                               env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
           for m in ENTRY_POINTS}
  for module, proc in procs.items():
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, (module, err[-2000:])
    assert out.startswith(ENTRY_POINTS[module]), (module, out[:500])


def _actions(parser: argparse.ArgumentParser):
  # pylint: disable=protected-access
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      for name, sub in action.choices.items():
        yield from ((f'{name} {a}', h) for a, h in _actions(sub))
    elif not isinstance(action, argparse._HelpAction):
      yield '/'.join(action.option_strings) or action.dest, action.help


@pytest.mark.parametrize('parser', [predict.parser, bench.parser,
                                    analysis_cli.parser])
def test_every_flag_is_described(parser):
  undocumented = [flag for flag, text in _actions(parser()) if not text]
  assert not undocumented


@pytest.mark.parametrize('args, line', [
    (['attention', '--layers', 'abc', '--images', 'x.png'],
     "error: --layers 'abc': expected comma-separated integers, e.g. 0,5,11"),
    (['lowpass', '--fractions', '1,half'],
     "error: --fractions '1,half': expected comma-separated numbers, e.g. "
     '1,0.3,0.1'),
])
def test_analysis_list_flags_are_one_line_errors(args, line, tmp_path,
                                                 capsys):
  assert analysis_cli.main([*args, '--out', str(tmp_path)]) == 1
  assert capsys.readouterr().err.strip().splitlines() == [line]
