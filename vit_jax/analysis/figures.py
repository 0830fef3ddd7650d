"""Drawing the analyses as PNG files (matplotlib, no display needed).

Every function takes numpy arrays (the output of the analysis modules) and a
path, writes one PNG and returns the path. Images are float [H, W, 3] in
[-1, 1] (model range) unless the argument says [0, 1].
"""

import os
from typing import Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

DPI = 80


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI, bbox_inches='tight')
  plt.close(fig)
  return path


def to_unit(image) -> np.ndarray:
  """[-1, 1] -> [0, 1] (clipped)."""
  return np.clip((np.asarray(image, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def upsample(m, size: Sequence[int]) -> np.ndarray:
  """Map [h, w] -> [H, W] (bilinear), for overlays."""
  m = np.asarray(m, np.float32)
  im = Image.fromarray(m)
  return np.asarray(im.resize((size[1], size[0]), Image.BILINEAR))


def _overlay(ax, image, m, alpha: float = 0.6):
  img = to_unit(image)
  up = upsample(m, img.shape[:2])
  ax.imshow(img)
  ax.imshow(up, cmap='inferno', alpha=alpha)
  ax.axis('off')


def attention_grid(image, maps, path: str, row_label: str = 'block',
                   col_label: str = 'head') -> str:
  """Overlays maps [rows, cols, h, w] on one image; rows = blocks."""
  maps = np.asarray(maps)
  r, c = maps.shape[:2]
  fig, axes = plt.subplots(r, c + 1, figsize=(1.3 * (c + 1), 1.3 * r),
                           squeeze=False)
  for i in range(r):
    axes[i, 0].imshow(to_unit(image))
    axes[i, 0].axis('off')
    axes[i, 0].set_title(f'{row_label} {i}', fontsize=7)
    for j in range(c):
      _overlay(axes[i, j + 1], image, maps[i, j])
      if i == 0:
        axes[i, j + 1].set_title(f'{col_label} {j}', fontsize=7)
  fig.subplots_adjust(wspace=0.03, hspace=0.15)
  return _save(fig, path)


def overlays(images, maps, path: str,
             titles: Optional[Sequence[str]] = None) -> str:
  """Image and map overlay side by side for each image (maps [B, h, w])."""
  b = len(images)
  fig, axes = plt.subplots(2, b, figsize=(2.0 * b, 4.1), squeeze=False)
  for i in range(b):
    axes[0, i].imshow(to_unit(images[i]))
    axes[0, i].axis('off')
    if titles:
      axes[0, i].set_title(titles[i], fontsize=7)
    _overlay(axes[1, i], images[i], maps[i], alpha=0.7)
  fig.subplots_adjust(wspace=0.03, hspace=0.05)
  return _save(fig, path)


def mean_distance(dist, path: str, title: str = '') -> str:
  """Mean attention distance [L, heads] in pixels vs block (ViT Fig. 7)."""
  dist = np.asarray(dist)
  fig, ax = plt.subplots(figsize=(4, 3))
  for h in range(dist.shape[1]):
    ax.scatter(np.arange(dist.shape[0]), dist[:, h], s=12,
               label=f'head {h}' if dist.shape[1] <= 6 else None)
  ax.set_xlabel('network depth (block)')
  ax.set_ylabel('mean attention distance (pixels)')
  ax.set_title(title, fontsize=9)
  if dist.shape[1] <= 6:
    ax.legend(fontsize=6)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def posemb_similarity(sim, path: str, title: str = '') -> str:
  """Grid of grids: sim [h, w, h, w] (ViT Fig. 7 centre)."""
  sim = np.asarray(sim)
  h, w = sim.shape[:2]
  fig, axes = plt.subplots(h, w, figsize=(0.45 * w + 0.8, 0.45 * h),
                           squeeze=False)
  for i in range(h):
    for j in range(w):
      im = axes[i, j].imshow(sim[i, j], vmin=-1, vmax=1, cmap='viridis')
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
  fig.subplots_adjust(wspace=0.05, hspace=0.05, right=0.85)
  cax = fig.add_axes([0.88, 0.15, 0.02, 0.7])
  fig.colorbar(im, cax=cax, label='cosine similarity')
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def filters(components, path: str, title: str = '',
            ncols: int = 7) -> str:
  """Patch-embedding principal components [n, ph, pw, 3], each min-max
  scaled to [0, 1] (ViT Fig. 7 left)."""
  comp = np.asarray(components)
  n = len(comp)
  nrows = -(-n // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(0.9 * ncols, 0.9 * nrows),
                           squeeze=False)
  for k, ax in enumerate(axes.ravel()):
    ax.axis('off')
    if k < n:
      c = comp[k]
      ax.imshow((c - c.min()) / max(np.ptp(c), 1e-12),
                interpolation='nearest')
  fig.suptitle(title, fontsize=9)
  fig.subplots_adjust(wspace=0.05, hspace=0.05)
  return _save(fig, path)


def image_grid(images01, path: str, titles: Optional[Sequence[str]] = None,
               ncols: int = 4, size: float = 2.0) -> str:
  """Images [N, H, W, 3] in [0, 1] on a grid, with optional titles."""
  n = len(images01)
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  fig, axes = plt.subplots(nrows, ncols,
                           figsize=(size * ncols, (size + 0.25) * nrows),
                           squeeze=False)
  for k, ax in enumerate(axes.ravel()):
    ax.axis('off')
    if k < n:
      ax.imshow(np.clip(images01[k], 0, 1))
      if titles:
        ax.set_title(titles[k], fontsize=7)
  fig.subplots_adjust(wspace=0.04, hspace=0.2)
  return _save(fig, path)


def curves(x, ys: dict, path: str, xlabel: str, ylabel: str = 'top-1 (%)',
           title: str = '') -> str:
  """Line plot of several curves ys = {label: [len(x)]} over x."""
  fig, ax = plt.subplots(figsize=(4.2, 3.2))
  for label, y in ys.items():
    ax.plot(x, y, marker='o', ms=3, label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return _save(fig, path)


def cls_insertion(layers, top1, path: str, title: str,
                  num_layers: int) -> str:
  """Top-1 (%) vs the block k before which the class token joins the patch
  tokens; the k = 0 value (the normal model), if measured, as a dashed line."""
  layers, top1 = list(layers), list(top1)
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  ax.plot(layers, top1, marker='o', ms=5, lw=1.8, label='measured')
  for k, v in zip(layers, top1):
    ax.annotate(f'{v:.1f}', (k, v), textcoords='offset points',
                xytext=(0, 6), ha='center', fontsize=8)
  if 0 in layers:
    base = top1[layers.index(0)]
    ax.axhline(base, ls='--', lw=1, color='gray',
               label=f'k = 0, normal model: {base:.2f} %')
  ax.set_xticks(range(num_layers + 1))
  ax.set_xlim(-0.5, num_layers + 0.5)
  ax.set_ylim(0, 100)
  ax.set_xlabel(f'k: class token joins the patch tokens before block k '
                f'(k = {num_layers}: never)', fontsize=10)
  ax.set_ylabel('top-1 (%)', fontsize=10)
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=9, loc='lower left')
  return _save(fig, path)


def spatial(image, maps, locality, path: str, title: str = '') -> str:
  """A feature's map per block [L, h, w] on the image, with its locality."""
  maps = np.asarray(maps)
  n = len(maps)
  ncols = min(n + 1, 7)
  nrows = -(-(n + 1) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows),
                           squeeze=False)
  axes = axes.ravel()
  axes[0].imshow(to_unit(image))
  axes[0].set_title('input', fontsize=7)
  for ax in axes:
    ax.axis('off')
  for i in range(n):
    axes[i + 1].imshow(maps[i], cmap='viridis')
    axes[i + 1].set_title(f'block {i}: loc {locality[i]:.2f}', fontsize=7)
  fig.suptitle(title, fontsize=8)
  fig.subplots_adjust(wspace=0.05, hspace=0.25)
  return _save(fig, path)
