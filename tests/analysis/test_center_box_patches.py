"""Known-answer tests of the centre-box patch approximation."""

import numpy as np
import pytest

from vit_jax.analysis import center_box_patches as cbp
from vit_jax.analysis import validate


def _images(b=3, size=64):
  rng = np.random.default_rng(0)
  return rng.uniform(-1, 1, size=(b, size, size, 3)).astype(np.float32)


def test_removing_nothing_changes_nothing():
  x = _images()
  for remove in cbp.REMOVABLE:
    np.testing.assert_array_equal(cbp.remove_patches(x, 0.0, 16, remove), x)


def test_centre_box_foreground_patches():
  fg = cbp.region_masks(np.tile(cbp.center_box(0.5), (1, 1)), (4, 4))
  expected = np.zeros((4, 4), bool)
  expected[1:3, 1:3] = True
  np.testing.assert_array_equal(fg[0], expected)


def test_removing_all_background_leaves_foreground_only():
  x = _images()
  out = cbp.remove_patches(x, 1.0, 16, 'background')
  np.testing.assert_array_equal(out[:, 16:48, 16:48], x[:, 16:48, 16:48])
  inside = np.zeros((64, 64), bool)
  inside[16:48, 16:48] = True
  assert (out[:, ~inside] == 0).all()


def test_fractions_are_nested_and_counted():
  boxes = np.tile(cbp.center_box(0.5), (2, 1))
  prev = None
  for f in (0.25, 0.5, 0.75, 1.0):
    m = cbp.patch_masks(boxes, (8, 8), f, 'background')
    assert m.sum(axis=(1, 2)).tolist() == [round(f * 48)] * 2
    fg = cbp.region_masks(boxes, (8, 8))
    assert not (m & fg).any()
    if prev is not None:
      assert (m | ~prev).all() and (m >= prev).all()
    prev = m


def test_bad_remove_and_fraction_name_allowed_values():
  with pytest.raises(validate.AnalysisError,
                     match="removed region 'sky' is not known: allowed "
                     'background, foreground'):
    cbp.remove_patches(_images(), 0.5, 16, 'sky')
  with pytest.raises(validate.AnalysisError, match=r'allowed 0\.0\.\.1\.0'):
    cbp.remove_patches(_images(), 1.5, 16)


def test_removing_all_foreground_leaves_background_only():
  """Naming as in the box protocol: remove='foreground' at fraction 1 is
  'background only': exactly the centre 32x32 (middle half) is mid-grey."""
  x = _images()
  out = cbp.remove_patches(x, 1.0, 16, 'foreground')
  inside = np.zeros((64, 64), bool)
  inside[16:48, 16:48] = True
  assert (out[:, inside] == 0).all()
  np.testing.assert_array_equal(out[:, ~inside], x[:, ~inside])
  assert cbp.LEFT_AT_FRACTION_1 == {'background': 'foreground only',
                                    'foreground': 'background only'}
