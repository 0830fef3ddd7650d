"""Masking patches inside or outside a foreground box (Ghiasi et al. 2022).

The image is cut into square patches of `patch_px` pixels (the ViT's patch
size, also used for the CNN so both see the same images). A patch belongs to
the foreground when its centre lies inside the image's box; the rest is
background. `fraction` of the patches of the chosen region are replaced by
`fill` (0 = mid-grey in [-1, 1]), picked in a fixed random order per image so
that larger fractions mask a superset of smaller ones and every model sees
the same masked images.

Boxes are (ymin, xmin, ymax, xmax) as fractions of the model input (after
the crop); `center_box(side)` is the default when an image has none.
"""

from typing import Optional, Sequence

import numpy as np

from vit_jax.analysis import validate

REGIONS = ('background', 'foreground')


def center_box(side: float = 0.5) -> tuple[float, float, float, float]:
  """A centred square box covering `side` of each dimension."""
  lo = (1.0 - side) / 2
  return (lo, lo, lo + side, lo + side)


def region_masks(boxes: np.ndarray, grid: Sequence[int]) -> np.ndarray:
  """Foreground patches, bool [B, h, w], from boxes [B, 4] (module doc)."""
  h, w = grid
  cy = (np.arange(h) + 0.5) / h
  cx = (np.arange(w) + 0.5) / w
  b = np.asarray(boxes, np.float64)[:, :, None, None]
  return ((cy[None, :, None] >= b[:, 0]) & (cy[None, :, None] <= b[:, 2]) &
          (cx[None, None, :] >= b[:, 1]) & (cx[None, None, :] <= b[:, 3]))


def patch_masks(boxes: np.ndarray, grid: Sequence[int], fraction: float,
                region: str = 'background', seed: int = 0) -> np.ndarray:
  """Which patches to mask, bool [B, h, w].

  Args:
    boxes: [B, 4] foreground boxes (module doc).
    grid: (h, w) patches per image.
    fraction: share of the region's patches to mask, in [0, 1]
      (rounded to whole patches).
    region: 'background' or 'foreground'.
    seed: the random order of patches (per image: seed + image index).
  """
  validate.choice('region', region, REGIONS)
  validate.fraction('masked fraction', fraction)
  fg = region_masks(boxes, grid)
  sel = fg if region == 'foreground' else ~fg
  out = np.zeros_like(sel)
  for i, s in enumerate(sel.reshape(len(sel), -1)):
    idx = np.flatnonzero(s)
    order = np.random.default_rng(seed + i).permutation(len(idx))
    k = int(round(fraction * len(idx)))
    out.reshape(len(out), -1)[i, idx[order[:k]]] = True
  return out


def apply_masks(images: np.ndarray, masks: np.ndarray,
                patch_px: int, fill: float = 0.0) -> np.ndarray:
  """images [B, H, W, C] with masked patches ([B, h, w]) set to `fill`."""
  px = np.repeat(np.repeat(masks, patch_px, axis=1), patch_px, axis=2)
  h, w = images.shape[1:3]
  full = np.zeros(images.shape[:3], bool)
  full[:, :px.shape[1], :px.shape[2]] = px[:, :h, :w]
  return np.where(full[..., None], np.asarray(fill, images.dtype), images)


def mask_images(images: np.ndarray, fraction: float, patch_px: int,
                region: str = 'background',
                boxes: Optional[np.ndarray] = None, fill: float = 0.0,
                seed: int = 0) -> np.ndarray:
  """Masks `fraction` of the region's patches (centre box when no boxes)."""
  b, h, w = images.shape[:3]
  if boxes is None:
    boxes = np.tile(center_box(), (b, 1))
  grid = (h // patch_px, w // patch_px)
  return apply_masks(images, patch_masks(boxes, grid, fraction, region, seed),
                     patch_px, fill)
