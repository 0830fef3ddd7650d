"""An approximation for images without boxes: patches removed around a
fixed centre box.

NOT the authors' protocol (that is `masking`: pixel-exact union of each
image's own-class boxes, removed at full resolution, black). Here the model
input (after resize and crop) is cut into square patches of `patch_px`
pixels (the ViT's patch size, also used for a CNN so both see the same
images). A patch is foreground when its centre lies inside the box, the
rest is background. `fraction` of the patches of the region named by
`remove` are set to `fill` (0 = mid-grey in [-1, 1]), in a fixed random
order per image, so that larger fractions remove a superset of smaller ones
and every model sees the same images.

Naming as in `masking`: `remove='background'` with fraction 1 leaves the
foreground only; `remove='foreground'` with fraction 1 leaves the
background only.

Boxes are (ymin, xmin, ymax, xmax) as fractions of the model input;
`center_box(side)` (the middle half of each side by default) when none.
"""

from typing import Optional, Sequence

import numpy as np

from vit_jax.analysis import validate

REMOVABLE = ('background', 'foreground')
LEFT_AT_FRACTION_1 = {'background': 'foreground only',
                      'foreground': 'background only'}


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
                remove: str = 'background', seed: int = 0) -> np.ndarray:
  """Which patches to remove, bool [B, h, w].

  Args:
    boxes: [B, 4] foreground boxes (module doc).
    grid: (h, w) patches per image.
    fraction: share of the region's patches to remove, in [0, 1]
      (rounded to whole patches).
    remove: the region removed, 'background' or 'foreground'.
    seed: the random order of patches (per image: seed + image index).
  """
  validate.choice('removed region', remove, REMOVABLE)
  validate.fraction('removed fraction', fraction)
  fg = region_masks(boxes, grid)
  sel = fg if remove == 'foreground' else ~fg
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


def remove_patches(images: np.ndarray, fraction: float, patch_px: int,
                   remove: str = 'background',
                   boxes: Optional[np.ndarray] = None, fill: float = 0.0,
                   seed: int = 0) -> np.ndarray:
  """images [B, H, W, 3] in [-1, 1] with `fraction` of the `remove`
  region's patches set to `fill` (centre box when no boxes)."""
  b, h, w = images.shape[:3]
  if boxes is None:
    boxes = np.tile(center_box(), (b, 1))
  grid = (h // patch_px, w // patch_px)
  return apply_masks(images, patch_masks(boxes, grid, fraction, remove, seed),
                     patch_px, fill)
