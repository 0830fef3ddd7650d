"""Eval image loading: listing, decoding errors, resize + center crop."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import images


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


# --- Decoding: every mode PIL opens -> RGB uint8, values scaled, not clipped.


def _png(path, pixels: np.ndarray, color_type: int) -> str:
  """A PNG written by hand (zlib + struct, not PIL): 16-bit grey
  (color_type 0, uint16 [H, W]) or 16-bit RGB (2, uint16 [H, W, 3])."""
  h, w = pixels.shape[:2]
  rows = pixels.astype('>u2').reshape(h, -1)
  raw = b''.join(b'\x00' + r.tobytes() for r in rows)

  def chunk(tag, data):
    return (struct.pack('>I', len(data)) + tag + data +
            struct.pack('>I', zlib.crc32(tag + data)))
  path.write_bytes(b'\x89PNG\r\n\x1a\n' +
                   chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16,
                                              color_type, 0, 0, 0)) +
                   chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
  return str(path)


def _grey(v) -> np.ndarray:
  return np.repeat(np.asarray(v, np.uint8)[..., None], 3, axis=-1)


RNG = np.random.default_rng(0)
U16 = RNG.integers(0, 65536, (6, 7), dtype=np.uint16)
U16[0, :4] = (0, 255, 256, 65535)  # the edges of the high-byte rule
RGB16 = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
RGBA = RNG.integers(0, 256, (6, 7, 4), dtype=np.uint8)
PALETTE = RNG.integers(0, 256, (4, 3), dtype=np.uint8)
INDEX = RNG.integers(0, 4, (6, 7), dtype=np.uint8)
FLOAT = RNG.random((6, 7), dtype=np.float32)


def _write_mode(path, mode):
  """(file written in `mode`, expected uint8 RGB by numpy from the raw
  values): 16-bit -> v >> 8, alpha dropped, palette looked up, CMYK ->
  (255 - C)(255 - K) / 255, 1-bit -> 0 / 255, float [0, 1] -> x * 255."""
  if mode == 'I;16 png':
    return _png(path.with_suffix('.png'), U16, 0), _grey(U16 >> 8)
  if mode == 'RGB 16-bit png':
    return _png(path.with_suffix('.png'), RGB16, 2), (RGB16 >> 8).astype(
        np.uint8)
  p = str(path.with_suffix('.tif'))
  if mode == 'I;16B tif':
    Image.frombytes('I;16B', (7, 6), U16.astype('>u2').tobytes()).save(p)
    return p, _grey(U16 >> 8)
  if mode == 'I tif':
    Image.fromarray(U16.astype(np.int32), 'I').save(p)
    return p, _grey(U16 >> 8)
  if mode == 'F tif':
    Image.fromarray(FLOAT, 'F').save(p)
    return p, _grey(np.round(FLOAT.astype(np.float64) * 255))
  if mode == 'CMYK tif':
    Image.fromarray(RGBA, 'CMYK').save(p)
    c, k = RGBA[..., :3].astype(np.float64), RGBA[..., 3:].astype(np.float64)
    return p, np.round((255 - c) * (255 - k) / 255).astype(np.uint8)
  p = str(path.with_suffix('.png'))
  if mode == 'RGBA png':
    Image.fromarray(RGBA, 'RGBA').save(p)
    return p, RGBA[..., :3]
  if mode == 'LA png':
    Image.fromarray(RGBA[..., :2].copy(), 'LA').save(p)
    return p, _grey(RGBA[..., 0])
  if mode == 'P png with transparency':
    im = Image.fromarray(INDEX, 'P')
    im.putpalette(PALETTE.tobytes())
    im.save(p, transparency=bytes([0, 255, 128, 255]))
    return p, PALETTE[INDEX]
  if mode == '1 png':
    Image.fromarray(RGBA[..., 0] > 127).save(p)
    return p, _grey(np.where(RGBA[..., 0] > 127, 255, 0))
  raise AssertionError(mode)


MODES = ('I;16 png', 'RGB 16-bit png', 'I;16B tif', 'I tif', 'F tif',
         'CMYK tif', 'RGBA png', 'LA png', 'P png with transparency',
         '1 png')


@pytest.mark.parametrize('mode', MODES)
def test_decode_rgb_scales_every_mode(tmp_path, mode):
  path, want = _write_mode(tmp_path / 'im', mode)
  with Image.open(path) as im:  # the file really is in that mode
    assert im.mode == mode.split()[0] or mode == 'RGB 16-bit png'
  got = images.decode_rgb(path)
  assert got.dtype == np.uint8 and got.shape == (6, 7, 3)
  np.testing.assert_array_equal(got, want)
  with open(path, 'rb') as f:  # a file object reads the same
    np.testing.assert_array_equal(images.decode_rgb(f), want)


def test_load_image_of_16bit_grey_is_not_white(tmp_path):
  """The 16-bit PNG goes through the eval resize and crop like its 8-bit
  equivalent (v >> 8), instead of being clipped to 255."""
  path = _png(tmp_path / 'g.png', U16, 0)
  out = images.load_image(path, resolution=4, crop_pct=1.0)
  ref = np.asarray(Image.fromarray(_grey(U16 >> 8)).resize(
      (5, 4), Image.BICUBIC).crop((0, 0, 4, 4)))
  np.testing.assert_array_equal(out, ref)
  assert (out == 255).mean() < 0.2


def test_float_image_outside_unit_range_is_an_error(tmp_path):
  p = str(tmp_path / 'f.tif')
  Image.fromarray(FLOAT * 300, 'F').save(p)
  with pytest.raises(images.ImageError, match=r'f\.tif.*outside \[0, 1\]'):
    images.decode_rgb(p)


def test_listing_skips_hidden_files_and_takes_any_case(tmp_path):
  write(tmp_path / 'B.JPG', 8, 8)
  (tmp_path / '._B.JPG').write_bytes(b'\x00\x05\x16\x07')  # macOS fork
  (tmp_path / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
  assert images.list_images([str(tmp_path)]) == [str(tmp_path / 'B.JPG')]
