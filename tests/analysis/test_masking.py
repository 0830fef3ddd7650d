"""The box protocol: pixel-exact union of own-class boxes, removed in black
at full resolution before the eval resize and crop (checked against numpy
and PIL), on synthetic images and on a real photo with our own box."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import images
from vit_jax.analysis import boxes
from vit_jax.analysis import masking

FIXTURES = str(pathlib.Path(__file__).parents[1] / 'fixtures' / 'boxes')


def _numpy_union(corners, h, w):
  """Reference: pixel (row r, column c), counted from 1, is inside a box
  when xmin <= c <= xmax and ymin <= r <= ymax."""
  r = np.arange(1, h + 1)[:, None]
  c = np.arange(1, w + 1)[None, :]
  out = np.zeros((h, w), bool)
  for x0, y0, x1, y1 in corners:
    out |= (c >= x0) & (c <= x1) & (r >= y0) & (r <= y1)
  return out


def _random_image(h, w, seed=0):
  return np.random.default_rng(seed).integers(1, 256, (h, w, 3), np.uint8)


def test_union_mask_equals_numpy_for_overlaps_borders_and_single_pixels():
  h, w = 37, 53
  corners = [(5, 4, 20, 18), (15, 10, 30, 25),  # overlapping
             (40, 1, 53, 37),                    # right, top, bottom border
             (1, 30, 1, 30)]                     # one pixel at column 1
  fg = masking.union_mask([boxes.Box('n', *c) for c in corners], h, w)
  np.testing.assert_array_equal(fg, _numpy_union(corners, h, w))
  assert fg[29, 0] and not fg[29, 1] and not fg[28, 0]  # inclusive, 1-based
  assert fg[:, 52].all() and fg.sum() == _numpy_union(corners, h, w).sum()


def test_conditions_remove_in_black_before_the_resize():
  """Reference built with numpy + PIL: mask at 300x200, then bicubic
  resize of the shorter side to 248 (372x248) and a 224 centre crop."""
  img = _random_image(200, 300)
  corners = [(101, 51, 180, 150), (170, 90, 250, 120)]
  fg = _numpy_union(corners, 200, 300)
  got = masking.conditions(img, masking.union_mask(
      [boxes.Box('n', *c) for c in corners], 200, 300), 224)
  assert got.shape == (3, 224, 224, 3) and got.dtype == np.uint8
  for k, drop in enumerate([np.zeros_like(fg), fg, ~fg]):
    ref = img.copy()
    ref[drop] = 0
    ref = np.asarray(Image.fromarray(ref).resize((372, 248), Image.BICUBIC)
                     .crop((74, 12, 298, 236)))
    np.testing.assert_array_equal(got[k], ref)
  # Removing after the resize (the box scaled to the 224 crop) differs.
  after = got[0].copy()
  s = 248 / 200
  after[round(50 * s) - 12:round(150 * s) - 12,
        round(100 * s) - 74:round(180 * s) - 74] = 0
  assert not np.array_equal(after, got[1])
  # Far from the boxes' edges the removed pixels are black: -1 in the model.
  x = images.to_model_range(got)
  assert (x[1, 60:120, 60:90] == -1).all()  # inside box 1 (rows 62..186)
  assert (x[2, :40] == -1).all() and (x[2, -40:] == -1).all()
  np.testing.assert_array_equal(x[0], images.to_model_range(
      images.preprocess(img, 224)))


def test_original_condition_is_the_eval_preprocessing_of_the_file(tmp_path):
  img = _random_image(120, 90)
  Image.fromarray(img).save(tmp_path / 'n01440764_a.png')
  ann = boxes.Annotation('n01440764_a.png',
                         [boxes.Box('n01440764', 1, 1, 90, 120)])
  samples, _ = masking.match([str(tmp_path / 'n01440764_a.png')],
                             {'n01440764_a': ann}, {'n01440764': 0})
  got, info = masking.load(samples[0], 64)
  share = info['foreground_share']
  np.testing.assert_array_equal(got[0], images.load_image(
      str(tmp_path / 'n01440764_a.png'), 64))
  # the box is the whole image: foreground only = original, background black
  assert share == 1.0
  np.testing.assert_array_equal(got[2], got[0])
  assert (got[1] == 0).all()


def test_only_own_class_boxes_are_removed(tmp_path):
  img = _random_image(64, 64)
  path = str(tmp_path / 'n02129165_lion.png')
  Image.fromarray(img).save(path)
  ann = boxes.Annotation('n02129165_lion.png', [
      boxes.Box('n02129165', 1, 1, 16, 16), boxes.Box('n09999999', 33, 33,
                                                      64, 64)])
  others = {'n02129165_lion': ann,
            'n04037443_racer': boxes.Annotation(
                'n04037443_racer.png', [boxes.Box('n09999999', 1, 1, 2, 2)])}
  Image.fromarray(img).save(tmp_path / 'n04037443_racer.png')
  Image.fromarray(img).save(tmp_path / 'n01440764_tench.png')
  paths = [path, str(tmp_path / 'n04037443_racer.png'),
           str(tmp_path / 'n01440764_tench.png')]
  samples, skipped = masking.match(
      paths, others, {'n01440764': 0, 'n02129165': 291, 'n04037443': 751})
  assert [(s.wnid, s.label, len(s.boxes)) for s in samples] == [
      ('n02129165', 291, 1)]
  assert skipped == {'no_annotation': 1, 'no_own_class_box': 1}
  got, info = masking.load(samples[0], 64)  # 64x64: no resize
  share = info['foreground_share']
  assert share == 16 * 16 / 64 ** 2
  assert (got[1, :16, :16] == 0).all()
  np.testing.assert_array_equal(got[1, 32:, 32:], img[32:, 32:])
  assert (got[2, 32:, 32:] == 0).all()


def test_topk_correct():
  logits = np.array([[0.1, 0.9, 0.5, 0.0], [3.0, 1.0, 2.0, 0.0]])
  np.testing.assert_array_equal(
      masking.topk_correct(logits, np.array([2, 2]), 1), [False, False])
  np.testing.assert_array_equal(
      masking.topk_correct(logits, np.array([2, 3]), 2), [True, False])


def test_committed_boxes_fit_their_shared_photos(shared_data):
  anns = boxes.read(FIXTURES)
  assert len(anns) == 28
  photos = shared_data / 'imagenet_samples'
  for key, a in anns.items():
    path = photos / a.image
    assert path.is_file(), path
    with Image.open(path) as im:
      w, h = im.size
    own = boxes.own_class_boxes(a, boxes.image_class(a.image))
    assert own and boxes.check_in_image(a, own, w, h, str(path)) == own


def test_real_photo_with_our_box_matches_a_pil_reference(shared_data):
  """n04254680_soccer_ball.JPEG (500x500, greyscale JPEG) with the ball's
  box 47 208 295 440 and a dog box of another class, which stays."""
  path = shared_data / 'imagenet_samples' / 'n04254680_soccer_ball.JPEG'
  samples, _ = masking.match([str(path)], boxes.read(FIXTURES),
                             {'n04254680': 805})
  assert [b.corners() for b in samples[0].boxes] == [(47, 208, 295, 440)]
  got, info = masking.load(samples[0], 224)
  share = info['foreground_share']
  with Image.open(path) as im:
    full = np.asarray(im.convert('RGB'))
  assert share == pytest.approx(249 * 233 / 500 ** 2)
  for k, (rows, cols, keep) in enumerate([(slice(0, 0), slice(0, 0), True),
                                          (slice(207, 440), slice(46, 295),
                                           False),
                                          (slice(207, 440), slice(46, 295),
                                           True)]):
    ref = full.copy() if k != 2 else np.zeros_like(full)
    ref[rows, cols] = full[rows, cols] if keep else 0
    ref = np.asarray(Image.fromarray(ref).resize((248, 248), Image.BICUBIC)
                     .crop((12, 12, 236, 236)))
    np.testing.assert_array_equal(got[k], ref)
  # the dog (other class, right of the ball) is untouched without the ball
  np.testing.assert_array_equal(got[1, :80, 180:], got[0, :80, 180:])
