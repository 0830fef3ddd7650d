"""pp ops against numpy / PIL references; eager and inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vit_jax import pp

SEED = tf.constant([3, 4], tf.int32)


def image(h=12, w=16):
  return np.random.RandomState(0).randint(0, 256, (h, w, 3)).astype(np.uint8)


def run_both(pp_string, x):
  """The composed ops eagerly and as a tf.data map (they must agree)."""
  fn = pp.build(pp_string)
  eager = fn(tf.constant(x), SEED).numpy()
  ds = tf.data.Dataset.from_tensors(x).map(lambda im: fn(im, SEED))
  mapped = next(iter(ds)).numpy()
  np.testing.assert_array_equal(eager, mapped)
  return eager


def test_decode_png_and_value_range(tmp_path):
  x = image()
  Image.fromarray(x).save(tmp_path / 'a.png')
  raw = tf.io.read_file(str(tmp_path / 'a.png'))
  out = pp.build('decode|value_range(-1,1)')(raw, SEED).numpy()
  np.testing.assert_allclose(out, x / 127.5 - 1, atol=1e-6)
  out = run_both('value_range(0,1)', x)
  np.testing.assert_allclose(out, x / 255, atol=1e-6)


def test_central_crop_and_resize():
  x = image(12, 16)
  np.testing.assert_array_equal(run_both('central_crop(6)', x),
                                x[3:9, 5:11])
  up = run_both('resize(24,32)', x)
  assert up.shape == (24, 32, 3) and up.dtype == np.uint8
  same = run_both('resize(12,16)', x)
  np.testing.assert_array_equal(same, x)
  small = run_both('resize_small(6)', x)
  assert small.shape == (6, 8, 3)


def test_random_crop_is_a_crop_and_seeded():
  x = image(12, 16)
  out = run_both('random_crop(5)', x)
  hits = [(i, j) for i in range(8) for j in range(12)
          if np.array_equal(x[i:i + 5, j:j + 5], out)]
  assert hits
  fn = pp.build('random_crop(5)')
  crops = {fn(tf.constant(x), tf.constant([0, s])).numpy().tobytes()
           for s in range(20)}
  assert len(crops) > 5  # different seeds, different crops


def test_flip_lr_flips_or_not():
  x = image()
  fn = pp.build('flip_lr')
  outs = [fn(tf.constant(x), tf.constant([1, s])).numpy() for s in range(20)]
  flipped = sum(np.array_equal(o, x[:, ::-1]) for o in outs)
  kept = sum(np.array_equal(o, x) for o in outs)
  assert flipped + kept == 20 and flipped > 2 and kept > 2


def test_inception_crop_shape_and_variety():
  x = image(40, 40)
  fn = pp.build('inception_crop(16)')
  outs = [fn(tf.constant(x), tf.constant([2, s])).numpy() for s in range(6)]
  assert all(o.shape == (16, 16, 3) for o in outs)
  assert len({o.tobytes() for o in outs}) > 1
  run_both('inception_crop(16)', x)


def test_bad_strings():
  with pytest.raises(ValueError, match="pp op 'rezise\\(3\\)'.*allowed: "):
    pp.build('decode|rezise(3)')
  with pytest.raises(ValueError, match='arguments must be numbers'):
    pp.build('resize(a)')
  with pytest.raises(ValueError, match='wrong arguments'):
    pp.build('central_crop')
