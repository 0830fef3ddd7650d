"""Known-answer tests of foreground / background patch masking."""

import numpy as np
import pytest

from vit_jax.analysis import masking
from vit_jax.analysis import validate


def _images(b=3, size=64):
  rng = np.random.default_rng(0)
  return rng.uniform(-1, 1, size=(b, size, size, 3)).astype(np.float32)


def test_masking_nothing_changes_nothing():
  x = _images()
  for region in masking.REGIONS:
    np.testing.assert_array_equal(masking.mask_images(x, 0.0, 16, region), x)


def test_centre_box_foreground_patches():
  fg = masking.region_masks(np.tile(masking.center_box(0.5), (1, 1)), (4, 4))
  expected = np.zeros((4, 4), bool)
  expected[1:3, 1:3] = True
  np.testing.assert_array_equal(fg[0], expected)


def test_full_background_masking_keeps_exactly_the_foreground():
  x = _images()
  out = masking.mask_images(x, 1.0, 16, 'background')
  np.testing.assert_array_equal(out[:, 16:48, 16:48], x[:, 16:48, 16:48])
  inside = np.zeros((64, 64), bool)
  inside[16:48, 16:48] = True
  assert (out[:, ~inside] == 0).all()


def test_fractions_are_nested_and_counted():
  boxes = np.tile(masking.center_box(0.5), (2, 1))
  prev = None
  for f in (0.25, 0.5, 0.75, 1.0):
    m = masking.patch_masks(boxes, (8, 8), f, 'background')
    assert m.sum(axis=(1, 2)).tolist() == [round(f * 48)] * 2
    fg = masking.region_masks(boxes, (8, 8))
    assert not (m & fg).any()
    if prev is not None:
      assert (m | ~prev).all() and (m >= prev).all()
    prev = m


def test_bad_region_and_fraction_name_allowed_values():
  with pytest.raises(validate.AnalysisError, match='background, foreground'):
    masking.mask_images(_images(), 0.5, 16, 'sky')
  with pytest.raises(validate.AnalysisError, match=r'allowed 0\.0\.\.1\.0'):
    masking.mask_images(_images(), 1.5, 16)
