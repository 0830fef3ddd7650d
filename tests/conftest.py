"""Test setup: CPU only, 8 forced host devices, real data located by path.

XLA_FLAGS must be set before jax is imported anywhere, hence at module level.
"""
import os
import pathlib

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # keep torch/tf off GPUs

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


def shared_data_dir() -> pathlib.Path:
  """Real data: $VIT_JAX_SHARED_DATA, default ../shared/data next to the repo."""
  return pathlib.Path(os.environ.get('VIT_JAX_SHARED_DATA',
                                     REPO.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  d = shared_data_dir()
  if not d.is_dir():
    pytest.skip(f'REAL DATA MISSING: {d} does not exist (set '
                'VIT_JAX_SHARED_DATA); tests on real data were NOT run')
  return d


@pytest.fixture
def fast_compile():
  """Turns most XLA optimizations off for the test (3x faster compiles of
  small models; numerics unchanged beyond float rounding)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)


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
