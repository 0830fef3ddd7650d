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


def image_table(images01, path: str, col_titles: Sequence[str],
                cell_titles: Sequence[Sequence[str]], size: float = 2.2,
                title: str = '') -> str:
  """Images [rows, cols, H, W, 3] in [0, 1]: column headers on top, one
  line under each image."""
  rows, cols = len(images01), len(col_titles)
  fig, axes = plt.subplots(rows, cols, figsize=(size * cols,
                                                (size + 0.3) * rows + 0.5),
                           squeeze=False)
  for i in range(rows):
    for j in range(cols):
      ax = axes[i, j]
      ax.imshow(np.clip(images01[i][j], 0, 1))
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_xlabel(cell_titles[i][j], fontsize=7)
      if i == 0:
        ax.set_title(col_titles[j], fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def bars(groups: Sequence[str], values: dict, path: str,
         ylabel: str = 'accuracy (%)', title: str = '') -> str:
  """Grouped bar chart: values = {series: [len(groups)]}, numbers on top."""
  fig, ax = plt.subplots(figsize=(1.9 * len(groups) + 1.2, 3.4))
  x = np.arange(len(groups))
  width = 0.8 / max(len(values), 1)
  for k, (label, ys) in enumerate(values.items()):
    pos = x + (k - (len(values) - 1) / 2) * width
    rects = ax.bar(pos, ys, width, label=label)
    ax.bar_label(rects, fmt='%.1f', fontsize=8, padding=1)
  ax.set_xticks(x, groups, fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_ylim(0, 118)
  ax.set_yticks(range(0, 101, 20))
  ax.set_title(title, fontsize=9)
  ax.grid(axis='y', alpha=0.3)
  ax.legend(fontsize=8, loc='upper center', ncol=len(values), frameon=False)
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


def top_images(images, maps, image_index, means, layers, units,
               names: Sequence[str], path: str, title: str = '') -> str:
  """Each unit's top image and its map there: one row per block.

  Args:
    images: float [B, H, W, 3] in [-1, 1], the searched set.
    maps: [L, K, h, w], unit k's activation on its top image, block l.
    image_index: int [L, K] into `images` / `names`.
    means: [L, K] mean activation over patch tokens on that image.
    layers: block numbers [L]; units: unit numbers [K].
    names: image names [B], shown above each image.
  """
  maps = np.asarray(maps)
  n_l, n_k = maps.shape[:2]
  # Per unit: image, map, colorbar, then a gap before the next unit.
  ratios = []
  for k in range(n_k):
    ratios += [1.0, 1.0, 0.07] + ([0.45] if k < n_k - 1 else [])
  height = 2.1 * n_l + 0.6
  fig = plt.figure(figsize=(sum(ratios) * 1.8, height))
  grid = fig.add_gridspec(n_l, len(ratios), width_ratios=ratios,
                          wspace=0.08, hspace=0.55, left=0.03, right=0.97,
                          bottom=0.2 / height, top=1 - 0.9 / height)
  for l in range(n_l):
    for k in range(n_k):
      c = 4 * k
      i = int(image_index[l, k])
      ax = fig.add_subplot(grid[l, c])
      ax.imshow(to_unit(images[i]))
      ax.set_title(_short(names[i]), fontsize=9)
      ax.set_xticks([])
      ax.set_yticks([])
      if k == 0:
        ax.set_ylabel(f'block {layers[l]}', fontsize=10)
      ax = fig.add_subplot(grid[l, c + 1])
      im = ax.imshow(maps[l, k], cmap='viridis', interpolation='nearest')
      ax.set_title(f'block {layers[l]}, unit {units[k]}\n'
                   f'mean {float(means[l, k]):.2f}', fontsize=9)
      ax.axis('off')
      cb = fig.colorbar(im, cax=fig.add_subplot(grid[l, c + 2]))
      cb.ax.tick_params(labelsize=8)
  if title:
    fig.suptitle(title, fontsize=11, y=1 - 0.1 / height)
  return _save(fig, path)


def _short(name: str, n: int = 22) -> str:
  """A name cut to n characters (ellipsis), to fit above a panel."""
  return name if len(name) <= n else name[:n - 1] + '…'
