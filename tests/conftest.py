"""Test setup: CPU only, 8 forced host devices, one compilation cache for
the session, real data located by path.

XLA_FLAGS and the cache settings must be set before jax is imported anywhere,
hence at module level. The cache is a fresh directory per pytest session
(removed at exit): an identical computation (the same tiny model's train
step in many runs, the same checkpoint's init in many predict calls) is
compiled once per session, here and in the subprocesses the tests start,
which inherit the environment. Nothing is kept between sessions.
"""
import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def _compile_flags() -> str:
  """XLA:CPU's classic loop emitters instead of its fusion emitters: a
  third less compile time for the suite's small programs (the tests are
  compile-bound), same operations. Used only where this XLA knows the flag
  (an unknown flag aborts the process): probed once, in a subprocess, by
  the first process of the session; its workers and subprocesses inherit
  the answer."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  var = 'VIT_JAX_TESTS_COMPILE_FLAGS'
  if var not in os.environ:
    flag = '--xla_cpu_use_fusion_emitters=false'
    env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS='cpu')
    ok = subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'],
                        env=env, capture_output=True, timeout=300,
                        check=False).returncode == 0
    os.environ[var] = flag if ok else ''
  return os.environ[var]


# For the subprocesses that set XLA_FLAGS themselves.
COMPILE_FLAGS = _compile_flags()
if '--xla_force_host_platform_device_count' not in os.environ.get(
    'XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + f' {COMPILE_FLAGS}'
      ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Most XLA optimizations off (3x faster compiles of small models; numerics
# unchanged beyond float rounding), here and in the subprocesses; a test that
# needs the optimizing compiler turns them back on (`optimized_compile`).
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # keep torch/tf off GPUs
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='vit_jax_tests_xla_cache_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  # Cache whole programs, not the many tiny ones of op-by-op execution.
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.2'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '-1'

try:
  # Once tensorflow is loaded, a later `import triton` (torch._dynamo, which
  # timm reaches through torchvision) dies with a segmentation fault (triton
  # 3.8, tensorflow-cpu, Linux); loaded first, the two coexist. Collection
  # imports tensorflow (tests/data) before timm (tests/models).
  import triton  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
except ImportError:
  pass

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent

SHARED_DATA_VAR = 'VIT_JAX_SHARED_DATA'
# What a complete real-data folder holds (../shared/data/README.md).
SHARED_DATA_FILES = ('checkpoints/ViT-Ti_16-augreg-i21k-ft-i1k-224.npz',
                     'imagenet_samples', 'imagenet_labels/imagenet_synsets.txt',
                     'cifar10/train', 'cifar10/test')
_REAL_DATA_SKIPS = []  # (test id, reason), for the terminal summary
if os.environ.get(SHARED_DATA_VAR):  # absolute: subprocesses run in REPO
  os.environ[SHARED_DATA_VAR] = os.path.abspath(os.environ[SHARED_DATA_VAR])


def subprocess_env() -> dict:
  """os.environ without the JAX_* / XLA_* settings of this test process (8
  forced devices, ...), for a subprocess that picks its own, but with the
  session's compilation cache (a relaunch reuses what the first launch
  compiled)."""
  return {k: v for k, v in os.environ.items()
          if not k.startswith(('JAX_', 'XLA_'))
          or k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE'))}


def shared_data_dir() -> pathlib.Path:
  """Real data: $VIT_JAX_SHARED_DATA, default ../shared/data next to the
  repository (as configs/common.py and vit_jax.analysis.data read it)."""
  value = os.environ.get(SHARED_DATA_VAR)
  return pathlib.Path(value) if value else REPO.parent / 'shared' / 'data'


def _where_it_came_from() -> str:
  value = os.environ.get(SHARED_DATA_VAR)
  if value:
    return f'${SHARED_DATA_VAR}={value}'
  return f'${SHARED_DATA_VAR} is not set, default ../shared/data of {REPO}'


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """The real data folder; skips (loudly: see the terminal summary) when it
  or one of SHARED_DATA_FILES is missing."""
  d = shared_data_dir()
  missing = [f for f in SHARED_DATA_FILES if not (d / f).exists()]
  if missing:
    what = (f'{d} does not exist' if not d.is_dir() else
            f'{d} lacks {", ".join(missing)}')
    pytest.skip(f'REAL DATA MISSING: {what} ({_where_it_came_from()}); '
                f'set {SHARED_DATA_VAR} to the real-data folder (its '
                'README.md lists what it holds)')
  return d


def pytest_xdist_auto_num_workers(config):
  """`-n auto` (pyproject.toml): one worker per core, at most 4 (each holds
  jax, tensorflow and torch, a few GB at its peak)."""
  del config
  return max(1, min(len(os.sched_getaffinity(0)), 4))


def pytest_runtest_logreport(report):
  if report.skipped and 'REAL DATA MISSING' in str(report.longrepr):
    _REAL_DATA_SKIPS.append((report.nodeid, report.longrepr[-1]))


def pytest_terminal_summary(terminalreporter):
  """Real-data skips are listed even without -rs: a run that skipped them
  did not test what they test."""
  if not _REAL_DATA_SKIPS:
    return
  tr = terminalreporter
  tr.section(f'{len(_REAL_DATA_SKIPS)} REAL-DATA TESTS WERE NOT RUN',
             sep='!', red=True, bold=True)
  tr.line(_REAL_DATA_SKIPS[0][1].removeprefix('Skipped: '), red=True)
  for nodeid, _ in _REAL_DATA_SKIPS:
    tr.line(f'  {nodeid}')


@pytest.fixture
def optimized_compile():
  """XLA's optimizations on for the test (what a run compiles)."""
  import jax  # pylint: disable=g-import-not-at-top
  was = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', was)


@pytest.fixture
def fast_compile():
  """Turns most XLA optimizations off for the test (3x faster compiles of
  small models; numerics unchanged beyond float rounding)."""
  import jax  # pylint: disable=g-import-not-at-top
  was = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', was)


def random_image_folder(root: pathlib.Path, classes, per_class: int,
                        size: int = 32, seed: int = 0) -> pathlib.Path:
  """<root>/<class>/<i>.png: `per_class` random uint8 RGB images of
  size x size per class (an image-folder dataset for CLI tests)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for c in classes:
    (root / c).mkdir()
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
          root / c / f'{i}.png')
  return root


def read_scalars(workdir) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} from the TensorBoard event files of a workdir
  (read by TensorFlow's own reader)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for f in sorted((pathlib.Path(workdir) / 'tensorboard').iterdir()):
    for event in tf.compat.v1.train.summary_iterator(str(f)):
      for v in event.summary.value:
        value = float(tf.make_ndarray(v.tensor))
        out.setdefault(v.tag, {})[event.step] = value
  return out
