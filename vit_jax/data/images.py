"""Reading image files: listing, decoding, eval preprocessing.

The one eval preprocessing rule of `predict`, `evaluate` on image files and
the analyses (training reads data through its input pipelines and their
`pp_eval` config string): decode to RGB, resize the shorter side to
`resize_size(resolution, crop_pct)` = floor(resolution / crop_pct) pixels
with bicubic (antialiased) resampling, then a centered resolution x
resolution crop, pixels to [-1, 1]. `CROP_PCT = 0.9` (timm's default for
these models) at 224 px gives resize 248, crop 224; `crop_pct=1` resizes the
shorter side straight to the resolution.

Decoding (`decode_rgb`) is shared by every reader of image files (predict,
the analyses, the `folder:` and `inmemory:` training inputs), so one file
gives the same pixels everywhere. Every mode PIL opens becomes RGB uint8 with
its values scaled, never clipped (table in `decode_rgb`).
"""

import math
import os
import warnings
from typing import BinaryIO, Optional, Sequence, Union

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff')


CROP_PCT = 0.9


def resize_size(resolution: int, crop_pct: float = CROP_PCT) -> int:
  """Pixels of the shorter side before the center crop: floor(resolution /
  crop_pct) (224 / 0.9 -> 248; a float quotient within 1e-6 of an integer
  counts as that integer: 160 / 0.8 -> 200)."""
  return math.floor(resolution / crop_pct + 1e-6)


class ImageError(ValueError):
  """A missing or unreadable image; the message names the path."""


def is_image_name(filename: str) -> bool:
  """An image extension (any case) and not hidden ('.DS_Store', macOS
  '._x.jpg' resource forks)."""
  return (not filename.startswith('.') and
          filename.lower().endswith(IMAGE_EXTENSIONS))


def list_images(paths: Sequence[str]) -> list[str]:
  """Files as given, directories expanded (sorted, `is_image_name` only)."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      found = sorted(os.path.join(p, f) for f in os.listdir(p)
                     if is_image_name(f))
      if not found:
        raise ImageError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in '
                         f'directory {p}')
      out += found
    elif os.path.isfile(p):
      out.append(p)
    else:
      raise ImageError(f'no such file or directory: {p}')
  return out


def _grey_to_rgb(v: np.ndarray) -> np.ndarray:
  return np.repeat(v.astype(np.uint8)[..., None], 3, axis=-1)


def _pixels_to_rgb(im: Image.Image, name: str) -> np.ndarray:
  """An opened PIL image -> uint8 [H, W, 3] (rules in `decode_rgb`)."""
  if im.mode == 'RGB':
    return np.asarray(im, np.uint8)
  if im.mode.startswith('I;16'):  # I;16, I;16L, I;16B, I;16N: uint16
    return _grey_to_rgb(np.asarray(im).astype(np.uint16) >> 8)
  if im.mode in ('I', 'F'):
    v = np.asarray(im)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if im.mode == 'I':
      if lo < 0 or hi > 65535:
        raise ImageError(f'cannot read image {name}: 32-bit integer pixels '
                         f'span [{lo:.0f}, {hi:.0f}], outside the 16-bit '
                         'range [0, 65535]; convert it to 8 or 16 bits')
      return _grey_to_rgb(v.astype(np.int64) >> 8)
    if not (np.isfinite(v).all() and lo >= 0 and hi <= 1):
      raise ImageError(f'cannot read image {name}: float pixels span '
                       f'[{lo:.4g}, {hi:.4g}], outside [0, 1]; convert it '
                       'to 8 bits')
    return _grey_to_rgb(np.round(v.astype(np.float64) * 255))
  with warnings.catch_warnings():  # "palette images with transparency..."
    warnings.simplefilter('ignore')
    try:
      rgb = im.convert('RGB')
    except ValueError as e:  # a mode PIL opens but cannot convert
      raise ImageError(f'cannot read image {name}: mode {im.mode} has no '
                       f'RGB conversion ({e})') from e
  return np.asarray(rgb, np.uint8)


def decode_rgb(source: Union[str, os.PathLike, BinaryIO],
               name: Optional[str] = None) -> np.ndarray:
  """An image file (path or binary file object) -> uint8 [H, W, 3].

  Values are scaled to 0..255, never clipped:
    L, RGB, YCbCr, CMYK   PIL's conversion (CMYK: (255 - C)(255 - K) / 255)
    1                     0 / 1 -> 0 / 255
    P, PA                 the palette colours
    LA, RGBA, P with transparency: the alpha channel is dropped (the stored
                          colours are kept, not composited), as
                          `tf.io.decode_image(channels=3)` does
    I;16 (L / B / N)      16-bit grey: v >> 8 (the high byte, how libpng
                          reduces 16 bits); 16-bit RGB PNGs PIL itself reads
                          as their high bytes
    I                     32-bit integer grey: must lie in 0..65535 (a 16-bit
                          image), then v >> 8; other ranges are an error
    F                     float grey: must lie in [0, 1], then round(x * 255);
                          other ranges (or NaN) are an error
  Multi-frame files (GIF, TIFF) give their first frame; EXIF orientation is
  not applied. Any failure is an `ImageError` naming the file (`name`, else
  the path, else the file object's name).
  """
  if name is None:
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else (
        getattr(source, 'name', '<file object>'))
  try:
    with Image.open(source) as im:
      return _pixels_to_rgb(im, name)
  except ImageError:
    raise
  except UnidentifiedImageError as e:
    raise ImageError(f'cannot read image {name}: not an image file (no '
                     'format PIL reads)') from e
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises OSError, SyntaxError, struct.error, DecompressionBombError..
    raise ImageError(f'cannot read image {name}: {e}') from e


def open_rgb(path: str) -> Image.Image:
  """`decode_rgb` as an RGB PIL image, at the file's full resolution."""
  return Image.fromarray(decode_rgb(path))


def load_image(path: str, resolution: int = 224, crop_pct: float = CROP_PCT,
               resize: Optional[int] = None) -> np.ndarray:
  """Eval preprocessing (module doc) -> uint8 [resolution, resolution, 3].

  `resize` (pixels of the shorter side) overrides `resize_size(resolution,
  crop_pct)`. An image already resolution x resolution is used as it is.
  """
  if not 0 < crop_pct <= 1:
    raise ImageError(f'crop_pct={crop_pct} must be in (0, 1]')
  return preprocess(decode_rgb(path), resolution, crop_pct, resize)


def preprocess(image, resolution: int = 224, crop_pct: float = CROP_PCT,
               resize: Optional[int] = None) -> np.ndarray:
  """`load_image`'s resize + center crop of an RGB PIL image or a uint8
  array [H, W, 3] at full resolution -> uint8 [resolution, resolution, 3]."""
  if not 0 < crop_pct <= 1:
    raise ImageError(f'crop_pct={crop_pct} must be in (0, 1]')
  im = image if isinstance(image, Image.Image) else Image.fromarray(
      np.asarray(image, np.uint8))
  if im.size == (resolution, resolution):
    return np.asarray(im, np.uint8)
  scale = (resize or resize_size(resolution, crop_pct)) / min(im.size)
  w, h = (max(resolution, round(s * scale)) for s in im.size)
  if (w, h) != im.size:
    im = im.resize((w, h), Image.BICUBIC)
  left, top = (w - resolution) // 2, (h - resolution) // 2
  im = im.crop((left, top, left + resolution, top + resolution))
  return np.asarray(im, np.uint8)


def to_model_range(images: np.ndarray) -> np.ndarray:
  """uint8 pixels [..., 3] -> float32 in [-1, 1]."""
  return np.asarray(images, np.float32) / 127.5 - 1.0
