"""Reading image files for evaluation: listing, decoding, eval preprocessing.

The one eval preprocessing rule of `predict`, `evaluate` on image files and
the analyses (training reads data through its input pipelines and their
`pp_eval` config string): decode to RGB, resize the shorter side to
`resize_size(resolution, crop_pct)` = floor(resolution / crop_pct) pixels
with bicubic (antialiased) resampling, then a centered resolution x
resolution crop, pixels to [-1, 1]. `CROP_PCT = 0.9` (timm's default for
these models) at 224 px gives resize 248, crop 224; `crop_pct=1` resizes the
shorter side straight to the resolution.
"""

import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

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


def list_images(paths: Sequence[str]) -> list[str]:
  """Files as given, directories expanded (sorted, image extensions only)."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      found = sorted(os.path.join(p, f) for f in os.listdir(p)
                     if f.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        raise ImageError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in '
                         f'directory {p}')
      out += found
    elif os.path.isfile(p):
      out.append(p)
    else:
      raise ImageError(f'no such file or directory: {p}')
  return out


def open_rgb(path: str) -> Image.Image:
  """Decodes an image file to RGB at its full resolution."""
  try:
    with Image.open(path) as im:
      return im.convert('RGB')
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ImageError(f'cannot read image {path}: {e}') from e


def load_image(path: str, resolution: int = 224, crop_pct: float = CROP_PCT,
               resize: Optional[int] = None) -> np.ndarray:
  """Eval preprocessing (module doc) -> uint8 [resolution, resolution, 3].

  `resize` (pixels of the shorter side) overrides `resize_size(resolution,
  crop_pct)`. An image already resolution x resolution is used as it is.
  """
  if not 0 < crop_pct <= 1:
    raise ImageError(f'crop_pct={crop_pct} must be in (0, 1]')
  return preprocess(open_rgb(path), resolution, crop_pct, resize)


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
