"""Eval image loading: listing, decoding errors, resize + center crop."""

import numpy as np
import pytest
from PIL import Image

from vit_jax import images


def write(path, w, h):
  rng = np.random.RandomState(0)
  Image.fromarray(rng.randint(0, 256, (h, w, 3), np.uint8)).save(path)
  return str(path)


def test_resize_shorter_side_then_center_crop(tmp_path):
  p = write(tmp_path / 'a.png', 300, 200)
  out = images.load_image(p, resolution=160, crop_pct=0.8)
  assert out.shape == (160, 160, 3) and out.dtype == np.uint8
  # reference: shorter side 200 -> 200, so the image is 300x200, crop center
  with Image.open(p) as im:
    ref = np.asarray(im.convert('RGB').crop((70, 20, 230, 180)))
  np.testing.assert_array_equal(out, ref)


def test_crop_pct_one_resizes_shorter_side_to_resolution(tmp_path):
  p = write(tmp_path / 'a.png', 64, 32)
  out = images.load_image(p, resolution=16, crop_pct=1.0)
  with Image.open(p) as im:
    ref = np.asarray(im.resize((32, 16), Image.BICUBIC).crop((8, 0, 24, 16)))
  np.testing.assert_array_equal(out, ref)
  x = images.to_model_range(out)
  assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1


def test_listing_and_errors(tmp_path):
  write(tmp_path / 'b.jpg', 8, 8)
  write(tmp_path / 'a.png', 8, 8)
  (tmp_path / 'notes.txt').write_text('x')
  assert images.list_images([str(tmp_path)]) == [
      str(tmp_path / 'a.png'), str(tmp_path / 'b.jpg')]
  with pytest.raises(images.ImageError, match='no such file or directory'):
    images.list_images([str(tmp_path / 'zzz.jpg')])
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(images.ImageError, match='no images'):
    images.list_images([str(empty)])
  (tmp_path / 'bad.jpg').write_bytes(b'nope')
  with pytest.raises(images.ImageError, match='cannot read image .*bad.jpg'):
    images.load_image(str(tmp_path / 'bad.jpg'))
  with pytest.raises(images.ImageError, match='crop_pct'):
    images.load_image(str(tmp_path / 'a.png'), crop_pct=1.5)


@pytest.mark.parametrize('resolution,crop_pct,want', [
    (224, 0.9, 248), (384, 1.0, 384), (160, 0.8, 200), (32, 0.875, 36)])
def test_resize_size_is_timms_floor(resolution, crop_pct, want):
  """timm's eval transform: scale_size = floor(img_size / crop_pct)."""
  assert images.resize_size(resolution, crop_pct) == want


def test_default_eval_preprocessing_resizes_to_248_for_224(tmp_path):
  p = write(tmp_path / 'a.png', 400, 300)
  out = images.load_image(p, resolution=224)
  with Image.open(p) as im:  # shorter side 300 -> 248: 400 -> 331
    ref = np.asarray(im.resize((331, 248), Image.BICUBIC)
                     .crop((53, 12, 277, 236)))
  np.testing.assert_array_equal(out, ref)


def test_preprocess_of_an_array_or_pil_image_is_load_image(tmp_path):
  """The hook the masking probe uses: same resize + crop as load_image."""
  p = write(tmp_path / 'a.png', 301, 203)
  arr = np.asarray(Image.open(p).convert('RGB'))
  want = images.load_image(p, resolution=64)
  np.testing.assert_array_equal(images.preprocess(arr, 64), want)
  np.testing.assert_array_equal(
      images.preprocess(Image.fromarray(arr), 64), want)
  np.testing.assert_array_equal(images.open_rgb(p), arr)
