"""Every pp string of configs/*.py parses, runs in tf.data, gives image_size.

The strings are collected two ways: the module-level string constants of
each config file that are pp strings, and `data.pp_train` / `data.pp_eval` of
the configs those files build (every experiment / dataset preset). Both
readers (`vit_jax.data.pp` for tf.data, `vit_jax.data.inmemory` for numpy) must accept
them: one config string works with either.
"""

import importlib
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from configs import common
from tests.conftest import REPO
from vit_jax import config_lib
from vit_jax.data import inmemory
from vit_jax.data import pp

CONFIGS = REPO / 'configs'


def _module_strings():
  """(where, pp string with placeholders) of module-level constants."""
  out = []
  for f in sorted(CONFIGS.glob('*.py')):
    mod = importlib.import_module(f'configs.{f.stem}')
    for name, value in vars(mod).items():
      if (isinstance(value, str) and '|' in value
          and 'value_range' in value):
        out.append((f'{f.name}:{name}', value, 224, 256))
  return out


def _config_strings():
  """(where, pp string, image_size, resize_size) of the built configs."""
  built = []
  for ds in common.DATASETS:
    for mod, model in (('vit', 'ti16'), ('pretrain', 'ti16'),
                       ('mixer', 'mixer_b16')):
      c = importlib.import_module(f'configs.{mod}').get_config(
          f'{model},{ds}')
      built.append((f'{mod}.py:{model},{ds}', c))
  cpu = importlib.import_module('configs.cpu')
  for name in cpu.EXPERIMENTS:
    built.append((f'cpu.py:{name}', cpu.get_config(name)))
  out = []
  for where, c in built:
    train, ev = config_lib.resolve_pp(c)
    out.append((where + ' pp_train', train, c.image_size, None))
    out.append((where + ' pp_eval', ev, c.image_size, None))
  return out


STRINGS = _module_strings() + _config_strings()


def test_found_the_config_strings():
  names = {w for w, *_ in STRINGS}
  assert 'common.py:PP_FINETUNE' in names and 'common.py:PP_PRETRAIN' in names
  assert any(w.startswith('cpu.py:digits') for w in names)
  assert len(STRINGS) > 30


@pytest.mark.parametrize(
    'pp_string,image_size,resize_size',
    sorted({(s, i, r) for _, s, i, r in STRINGS}, key=str))
def test_config_pp_string_runs_in_tf_data(pp_string, image_size, resize_size):
  if resize_size is not None:  # a template with placeholders
    pp_string = pp_string.format(image_size=image_size,
                                 resize_size=resize_size)
  inmemory.parse_pp(pp_string)  # the numpy reader accepts it too
  fn = pp.build(pp_string)
  jpeg = tf.io.encode_jpeg(tf.constant(
      np.random.RandomState(0).randint(0, 256, (40, 50, 3)), tf.uint8))
  ds = tf.data.Dataset.from_tensors(jpeg).map(
      lambda x: fn(x, tf.constant([0, 1], tf.int32)))
  out = next(iter(ds)).numpy()
  assert out.shape == (image_size, image_size, 3), pp_string
  assert out.dtype == np.float32
  assert -1 <= out.min() and out.max() <= 1
