"""pp ops against numpy / PIL references; eager and inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vit_jax.data import pp

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


def pil_bilinear(x, h, w):
  """PIL's (antialiased) bilinear resize of uint8 [H, W, 3], in float."""
  return np.stack([np.asarray(Image.fromarray(
      x[..., c].astype(np.float32), 'F').resize((w, h), Image.BILINEAR))
                   for c in range(3)], -1)


@pytest.mark.parametrize('h,w', [(24, 32), (60, 80), (7, 9), (15, 10)])
def test_resize_matches_pil_bilinear(h, w):
  # up, up, down (antialiased), mixed: equal up to the uint8 rounding
  x = np.asarray(Image.fromarray(image(12, 16)).resize((40, 30),
                                                       Image.NEAREST))
  out = run_both(f'resize({h},{w})', x)
  assert out.shape == (h, w, 3) and out.dtype == np.uint8
  np.testing.assert_allclose(out, pil_bilinear(x, h, w), atol=0.5 + 1e-3)
  small = run_both(f'resize_small({min(h, w)})', x)  # 30 x 40, aspect kept
  s = min(h, w)
  hw = (s, round(40 * s / 30))
  np.testing.assert_allclose(small, pil_bilinear(x, *hw), atol=0.5 + 1e-3)


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


@pytest.mark.parametrize('h,w', [(6, 8), (24, 32), (9, 10)])
def test_resize_matches_pil_bilinear_uint8(h, w):
  x = image(12, 16)
  out = run_both(f'resize({h},{w})', x).astype(int)
  ref = np.asarray(Image.fromarray(x).resize((w, h), Image.BILINEAR))
  assert out.shape == ref.shape
  assert np.abs(out - ref.astype(int)).max() <= 1  # rounding only


def test_resize_small_matches_pil_and_keeps_aspect():
  x = image(12, 16)
  out = run_both('resize_small(9)', x).astype(int)
  ref = np.asarray(Image.fromarray(x).resize((12, 9), Image.BILINEAR))
  assert out.shape == (9, 12, 3)
  assert np.abs(out - ref.astype(int)).max() <= 1
