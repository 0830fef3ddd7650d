"""Drawing the analyses as figures (matplotlib, no display needed).

Every drawing function takes numpy arrays (the output of the analysis
modules) and the words to show, and returns a `matplotlib.figure.Figure`;
`save(fig, path)` writes it as a PNG at `DPI` and closes it. Images are float
[H, W, 3] in [-1, 1] (model range) unless the argument says [0, 1].

Conventions, for a reader at the saved size: a title saying what is shown
(model, image, blocks / heads, what the colour means), a colorbar wherever a
colour encodes a number, no font below `MIN_FONT` points (11 px at `DPI`),
and no text over another text or over an image panel (`overlaps` checks
this; `save` prints a warning line when it finds any).
"""

import functools
import os
import sys
import textwrap
from typing import Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

DPI = 100
MIN_FONT = 8  # points; 11 px at DPI 100
TITLE_FONT = 11
PANEL_FONT = 9
STYLE = {'font.size': 10, 'axes.titlesize': PANEL_FONT, 'axes.labelsize': 10,
         'xtick.labelsize': 9, 'ytick.labelsize': 9, 'legend.fontsize': 9,
         'figure.titlesize': TITLE_FONT}
ATTENTION_CMAP = 'inferno'
MAP_CMAP = 'viridis'


def save(fig, path: str) -> str:
  """Writes `fig` to `path` (PNG, `DPI`, cropped to its content), closes it
  and returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with plt.rc_context(STYLE):  # ticks are made at draw time
    problems = overlaps(fig)
    fig.savefig(path, dpi=DPI, bbox_inches='tight', pad_inches=0.08)
  plt.close(fig)
  if problems:
    print(f'warning: {path}: {len(problems)} overlapping texts, e.g. '
          f'{problems[0]}', file=sys.stderr)
  return path


def overlaps(fig, tol: float = 1.0) -> list[str]:
  """Texts of `fig` that overlap another text or an image panel.

  Texts: each axes' titles, axis labels, visible tick labels, annotations
  and legend entries, and the figure's suptitle / supxlabel / supylabel /
  texts. Image panels: axes holding an image; an annotation inside its own
  image axes is allowed. Boxes are the renderer's window extents (pixels),
  shrunk by `tol` px on each side. Returns one readable line per overlap.
  """
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  texts = []  # (owning axes or None, is an annotation, text artist)
  for ax in fig.axes:
    if not ax.get_visible():
      continue
    texts += [(ax, False, getattr(ax, n, None))
              for n in ('title', '_left_title', '_right_title')]
    texts += [(ax, True, t) for t in ax.texts]
    for axis in (ax.xaxis, ax.yaxis):
      if not (ax.axison and axis.get_visible()):  # axis('off'): not drawn
        continue
      texts.append((ax, False, axis.label))
      lo, hi = sorted(axis.get_view_interval())
      for tick in axis.get_major_ticks() + axis.get_minor_ticks():
        if lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:
          texts += [(ax, False, tick.label1), (ax, False, tick.label2)]
    if ax.get_legend() is not None:
      texts += [(ax, True, t) for t in ax.get_legend().get_texts()]
  for name in ('_suptitle', '_supxlabel', '_supylabel'):
    texts.append((None, False, getattr(fig, name, None)))
  texts += [(None, False, t) for t in fig.texts]
  boxes, seen = [], set()
  for ax, inside, t in texts:
    if (t is None or id(t) in seen or not t.get_visible() or
        not t.get_text().strip()):
      continue
    seen.add(id(t))
    b = t.get_window_extent(renderer)
    boxes.append((ax, inside, t.get_text(), (b.x0 + tol, b.y0 + tol,
                                             b.x1 - tol, b.y1 - tol)))
  panels = [(ax, ax.get_window_extent(renderer)) for ax in fig.axes
            if ax.get_visible() and ax.images]
  out = []
  for k, (ax, inside, s, b) in enumerate(boxes):
    for ax2, p in panels:
      if inside and ax2 is ax:
        continue
      if _hit(b, (p.x0, p.y0, p.x1, p.y1)):
        out.append(f'{_quote(s)} overlaps an image panel')
    for _, _, s2, b2 in boxes[k + 1:]:
      if _hit(b, b2):
        out.append(f'{_quote(s)} overlaps {_quote(s2)}')
  return out


def _hit(a, b) -> bool:
  """Whether boxes (x0, y0, x1, y1) intersect."""
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _quote(s: str) -> str:
  s = s.replace('\n', ' ')
  return repr(s if len(s) <= 40 else s[:39] + '…')


def _styled(draw):
  """Runs a drawing function under the module's STYLE."""
  @functools.wraps(draw)
  def wrapped(*args, **kwargs):
    with plt.rc_context(STYLE):
      return draw(*args, **kwargs)
  return wrapped


def _figure(width: float, height: float, images: bool = False):
  """A figure of width x height inches with constrained layout
  ('compressed' for grids of images: no gaps beyond the padding)."""
  return plt.figure(figsize=(width, height),
                    layout='compressed' if images else 'constrained')


def _wrap(text: str, width_in: float, fontsize: float) -> str:
  """Text broken into lines that fit `width_in` inches at `fontsize` pt
  (an average glyph of DejaVu Sans is about 0.6 em wide); existing line
  breaks are kept."""
  chars = max(16, int(width_in * 72 / (0.6 * fontsize)))
  return '\n'.join(textwrap.fill(line, chars, break_on_hyphens=False)
                   if line else ''
                   for line in text.split('\n'))


def _suptitle(fig, title: str) -> None:
  if title:
    fig.suptitle(_wrap(title, fig.get_figwidth() - 0.2, TITLE_FONT),
                 fontsize=TITLE_FONT)


def short(name: str, n: int = 22) -> str:
  """A name cut to n characters (ellipsis), to fit above a panel."""
  return name if len(name) <= n else name[:n - 1] + '…'


def to_unit(image) -> np.ndarray:
  """[-1, 1] -> [0, 1] (clipped)."""
  return np.clip((np.asarray(image, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def upsample(m, size: Sequence[int]) -> np.ndarray:
  """Map [h, w] -> [H, W] (bilinear), for overlays."""
  m = np.asarray(m, np.float32)
  im = Image.fromarray(m)
  return np.asarray(im.resize((size[1], size[0]), Image.BILINEAR))


def scaled_to_max(m) -> np.ndarray:
  """A non-negative map divided by its maximum (all 0 if the max is 0)."""
  m = np.asarray(m, np.float32)
  top = float(m.max())
  return m / top if top > 0 else np.zeros_like(m)


def _image(ax, image01) -> None:
  """An image panel: no ticks, thin frame (so axis labels stay visible)."""
  ax.imshow(np.clip(image01, 0, 1))
  ax.set_xticks([])
  ax.set_yticks([])
  for s in ax.spines.values():
    s.set_linewidth(0.5)


def _overlay(ax, image, m01, alpha: float = 0.6):
  """Map in [0, 1] (upsampled, coloured by ATTENTION_CMAP) blended over
  an image in [-1, 1] with weight `alpha`; returns a mappable of the map's
  colours for the colorbar."""
  img = to_unit(image)
  cmap = plt.get_cmap(ATTENTION_CMAP)
  colour = cmap(np.clip(upsample(m01, img.shape[:2]), 0, 1))[..., :3]
  _image(ax, (1 - alpha) * img + alpha * colour)
  return matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), cmap)


@_styled
def attention_grid(image, maps, title: str, row_labels: Sequence[str],
                   col_labels: Sequence[str],
                   colorbar_label: str = 'attention weight / its maximum '
                   'in the map') -> Figure:
  """One image and maps [rows, cols, h, w] over it (rows: blocks, cols:
  heads), each map scaled to its own maximum; a colorbar below."""
  maps = np.asarray(maps)
  r, c = maps.shape[:2]
  panel = 1.35
  fig = _figure(panel * (c + 1) + 0.6, panel * r + 1.3, images=True)
  axes = fig.subplots(r, c + 1, squeeze=False)
  for i in range(r):
    _image(axes[i, 0], to_unit(image))
    axes[i, 0].set_ylabel(row_labels[i])
    for j in range(c):
      im = _overlay(axes[i, j + 1], image, scaled_to_max(maps[i, j]))
  for j, label in enumerate(['input', *col_labels]):
    axes[0, j].set_title(label)
  fig.colorbar(im, ax=axes[:, 1:], location='bottom', shrink=0.9,
               aspect=25, pad=0.01, label=colorbar_label)
  _suptitle(fig, title)
  return fig


@_styled
def overlays(images, maps, titles: Sequence[str], title: str,
             colorbar_label: str, map_label: str = 'map'
             ) -> Figure:
  """Each image (top row, titled) and its map [B, h, w] over it (bottom
  row), each map scaled to its own maximum; a colorbar on the right."""
  b = len(images)
  panel = 2.3
  fig = _figure(panel * b + 0.9, 2 * panel + 1.7, images=True)
  axes = fig.subplots(2, b, squeeze=False)
  for i in range(b):
    _image(axes[0, i], to_unit(images[i]))
    axes[0, i].set_title(titles[i])
    im = _overlay(axes[1, i], images[i], scaled_to_max(maps[i]), alpha=0.7)
  axes[0, 0].set_ylabel('input')
  axes[1, 0].set_ylabel(map_label)
  fig.colorbar(im, ax=axes[1, :], location='right', shrink=0.95, pad=0.01,
               label=_wrap(colorbar_label, panel, 10))
  _suptitle(fig, title)
  return fig


@_styled
def mean_distance(dist, title: str) -> Figure:
  """Mean attention distance [L, heads] in pixels vs block (ViT Fig. 7);
  heads side by side within a block."""
  dist = np.asarray(dist)
  n_l, n_h = dist.shape
  fig = _figure(6.6, 4.4)
  ax = fig.add_subplot()
  for h in range(n_h):
    dx = (h - (n_h - 1) / 2) * min(0.6 / n_h, 0.12)
    ax.scatter(np.arange(n_l) + dx, dist[:, h], s=16, label=f'head {h}')
  ax.set_xticks(range(n_l))
  ax.set_xlabel('block (network depth)')
  ax.set_ylabel('mean attention distance (pixels)')
  ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  if n_h <= 16:
    ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False)
  _suptitle(fig, title)
  return fig


@_styled
def posemb_similarity(sim, title: str) -> Figure:
  """Grid of grids (ViT Fig. 7 centre): sim [h, w, h, w], tile (i, j) is
  position (i, j)'s cosine similarity with every position; white lines
  between the tiles, one colorbar."""
  sim = np.asarray(sim, np.float32)
  h, w = sim.shape[:2]
  mosaic = np.full((h * (h + 1) - 1, w * (w + 1) - 1), np.nan, np.float32)
  for i in range(h):
    for j in range(w):
      mosaic[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = (
          sim[i, j])
  fig = _figure(0.5 * w + 2.0, 0.5 * h + 1.6)
  ax = fig.add_subplot()
  cmap = plt.get_cmap(MAP_CMAP).with_extremes(bad='white')
  im = ax.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation='nearest')
  ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(w)], range(w))
  ax.set_yticks([i * (h + 1) + (h - 1) / 2 for i in range(h)], range(h))
  ax.tick_params(length=0, labelsize=8)
  for s in ax.spines.values():
    s.set_visible(False)
  ax.set_xlabel('column of the position')
  ax.set_ylabel('row of the position')
  fig.colorbar(im, ax=ax, shrink=0.7, label='cosine similarity')
  _suptitle(fig, title)
  return fig


@_styled
def filters(components, title: str, captions: Optional[Sequence[str]] = None,
            ncols: int = 7) -> Figure:
  """Patch-embedding principal components [n, ph, pw, 3] as RGB, each
  min-max scaled to [0, 1] (ViT Fig. 7 left), with a caption above each."""
  comp = np.asarray(components)
  n = len(comp)
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  fig = _figure(1.15 * ncols + 0.3, 1.3 * nrows + 0.9, images=True)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for k, ax in enumerate(axes.ravel()):
    ax.axis('off')
    if k < n:
      c = comp[k]
      ax.imshow((c - c.min()) / max(np.ptp(c), 1e-12),
                interpolation='nearest')
      if captions:
        ax.set_title(captions[k], fontsize=8)
  _suptitle(fig, title)
  return fig


@_styled
def image_grid(images01, titles: Optional[Sequence[str]] = None,
               title: str = '', ncols: int = 4, size: float = 2.4
               ) -> Figure:
  """Images [N, H, W, 3] in [0, 1] on a grid, with optional titles."""
  n = len(images01)
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  lines = max((t.count('\n') + 1 for t in titles), default=0) if titles else 0
  fig = _figure(size * ncols + 0.3,
                (size + 0.2 * lines + 0.1) * nrows + 0.9, images=True)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for k, ax in enumerate(axes.ravel()):
    ax.axis('off')
    if k < n:
      ax.imshow(np.clip(images01[k], 0, 1))
      if titles:
        ax.set_title(titles[k])
  _suptitle(fig, title)
  return fig


@_styled
def curves(x, ys: dict, xlabel: str, ylabel: str = 'top-1 (%)',
           title: str = '', logx: Optional[bool] = None
           ) -> Figure:
  """Line plot of several curves ys = {label: [len(x)]} over x.

  `logx` (default: when every x > 0 and they span 10x or more) puts x on a
  log scale, ticked at the x values.
  """
  x = np.asarray(x, np.float64)
  if logx is None:
    logx = bool(len(x)) and x.min() > 0 and x.max() >= 10 * x.min()
  fig = _figure(6.6, 4.4)
  ax = fig.add_subplot()
  for label, y in ys.items():
    ax.plot(x, y, marker='o', ms=4, lw=1.6, label=label)
  if logx:
    ax.set_xscale('log')
    ax.set_xticks(x, [f'{v:g}' for v in x])
    ax.minorticks_off()
  elif len(x) <= 16 and np.all(x == np.round(x)):  # e.g. blocks
    ax.set_xticks(x, [f'{v:g}' for v in x])
  ax.set_xlabel(_wrap(xlabel, 5.5, 10))
  ax.set_ylabel(_wrap(ylabel, 3.5, 10))
  ax.grid(alpha=0.3)
  ax.legend(loc='best')
  _suptitle(fig, title)
  return fig


@_styled
def image_table(images01, col_titles: Sequence[str],
                cell_titles: Sequence[Sequence[str]], title: str = '',
                size: float = 2.3) -> Figure:
  """Images [rows, cols, H, W, 3] in [0, 1]: column headers on top, a
  caption under each image."""
  rows, cols = len(images01), len(col_titles)
  lines = max(c.count('\n') + 1 for row in cell_titles for c in row)
  fig = _figure(size * cols + 0.3,
                (size + 0.2 * lines + 0.15) * rows + 1.2, images=True)
  axes = fig.subplots(rows, cols, squeeze=False)
  for i in range(rows):
    for j in range(cols):
      ax = axes[i, j]
      _image(ax, images01[i][j])
      ax.set_xlabel(cell_titles[i][j], fontsize=PANEL_FONT)
      if i == 0:
        ax.set_title(col_titles[j], fontsize=10)
  _suptitle(fig, title)
  return fig


@_styled
def bars(groups: Sequence[str], values: dict, ylabel: str = 'accuracy (%)',
         title: str = '') -> Figure:
  """Grouped bar chart: values = {series: [len(groups)]}, numbers on top."""
  fig = _figure(max(2.0 * len(groups) + 1.4, 6.0), 4.2)
  ax = fig.add_subplot()
  x = np.arange(len(groups))
  width = 0.8 / max(len(values), 1)
  for k, (label, ys) in enumerate(values.items()):
    pos = x + (k - (len(values) - 1) / 2) * width
    rects = ax.bar(pos, ys, width, label=label)
    ax.bar_label(rects, fmt='%.1f', fontsize=9, padding=1)
  ax.set_xticks(x, groups)
  ax.set_ylabel(ylabel)
  ax.set_ylim(0, 118)
  ax.set_yticks(range(0, 101, 20))
  ax.grid(axis='y', alpha=0.3)
  ax.legend(loc='upper center', ncol=len(values), frameon=False)
  _suptitle(fig, title)
  return fig


@_styled
def cls_insertion(layers, top1, title: str,
                  num_layers: int) -> Figure:
  """Top-1 (%) vs the block k before which the class token joins the patch
  tokens; the k = 0 value (the normal model), if measured, as a dashed line."""
  layers, top1 = list(layers), list(top1)
  fig = _figure(6.8, 4.6)
  ax = fig.add_subplot()
  ax.plot(layers, top1, marker='o', ms=5, lw=1.8, label='measured')
  for k, v in zip(layers, top1):
    ax.annotate(f'{v:.1f}', (k, v), textcoords='offset points',
                xytext=(0, 6), ha='center', fontsize=9)
  if 0 in layers:
    base = top1[layers.index(0)]
    ax.axhline(base, ls='--', lw=1, color='gray',
               label=f'k = 0, normal model: {base:.2f} %')
  ax.set_xticks(range(num_layers + 1))
  ax.set_xlim(-0.5, num_layers + 0.5)
  ax.set_ylim(0, 100)
  ax.set_xlabel(f'k: class token joins the patch tokens before block k '
                f'(k = {num_layers}: never)')
  ax.set_ylabel('top-1 (%)')
  ax.grid(alpha=0.3)
  ax.legend(loc='upper right')
  _suptitle(fig, title)
  return fig


@_styled
def spatial(image, maps, locality, title: str,
            colorbar_label: str = 'activation',
            layers: Optional[Sequence[int]] = None) -> Figure:
  """A feature's map per block [L, h, w] next to the image, each with its
  own colour scale (colorbar) and its locality [L] in the panel title;
  `layers` numbers the blocks (default 0..L-1)."""
  maps = np.asarray(maps)
  n = len(maps)
  layers = list(range(n)) if layers is None else list(layers)
  ncols = min(n + 1, 7)
  nrows = -(-(n + 1) // ncols)
  fig = _figure(1.95 * ncols + 0.3, 1.85 * nrows + 1.0, images=True)
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in axes[n + 1:]:
    ax.axis('off')
  _image(axes[0], to_unit(image))
  axes[0].set_title('input')
  for i in range(n):
    ax = axes[i + 1]
    im = ax.imshow(maps[i], cmap=MAP_CMAP, interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f'block {layers[i]}\nloc {locality[i]:.2f}')
    cb = fig.colorbar(im, ax=ax, fraction=0.07, pad=0.03)
    cb.ax.tick_params(labelsize=8)
    cb.ax.yaxis.get_offset_text().set_fontsize(8)
  fig.supxlabel(colorbar_label, fontsize=9)
  _suptitle(fig, title)
  return fig


@_styled
def top_images(images, maps, image_index, means, layers, units,
               names: Sequence[str], title: str = '',
               colorbar_label: str = 'activation'
               ) -> Figure:
  """Each unit's top image and its map there: one row per block.

  Args:
    images: float [B, H, W, 3] in [-1, 1], the searched set.
    maps: [L, K, h, w], unit k's activation on its top image, block l.
    image_index: int [L, K] into `images` / `names`.
    means: [L, K] mean activation over patch tokens on that image.
    layers: block numbers [L]; units: unit numbers [K].
    names: image names [B], shown above each image.
    colorbar_label: what the maps' colour is, under the first colorbar.
  """
  maps = np.asarray(maps)
  n_l, n_k = maps.shape[:2]
  # Per unit: image, map, colorbar, then a gap before the next unit.
  ratios = []
  for k in range(n_k):
    ratios += [1.0, 1.0, 0.07] + ([0.5] if k < n_k - 1 else [])
  panel = 1.5
  height = 1.9 * n_l + 1.0
  fig = plt.figure(figsize=(sum(ratios) * panel + 0.5, height))
  grid = fig.add_gridspec(n_l, len(ratios), width_ratios=ratios,
                          wspace=0.1, hspace=0.62, left=0.04, right=0.97,
                          bottom=0.35 / height, top=1 - 1.0 / height)
  for l in range(n_l):
    for k in range(n_k):
      c = 4 * k
      i = int(image_index[l, k])
      ax = fig.add_subplot(grid[l, c])
      _image(ax, to_unit(images[i]))
      ax.set_title(short(names[i], 19), fontsize=8.5)
      if k == 0:
        ax.set_ylabel(f'block {layers[l]}', fontsize=10)
      ax = fig.add_subplot(grid[l, c + 1])
      im = ax.imshow(maps[l, k], cmap=MAP_CMAP, interpolation='nearest')
      ax.set_title(f'unit {units[k]}\nmean {float(means[l, k]):.2f}',
                   fontsize=8.5)
      ax.axis('off')
      cb = fig.colorbar(im, cax=fig.add_subplot(grid[l, c + 2]))
      cb.ax.tick_params(labelsize=8)
      cb.ax.yaxis.get_offset_text().set_fontsize(8)
  fig.text(0.5, 0.12 / height, colorbar_label, ha='center', va='bottom',
           fontsize=9)
  if title:
    fig.suptitle(_wrap(title, fig.get_figwidth() - 0.4, TITLE_FONT),
                 fontsize=TITLE_FONT, y=1 - 0.1 / height, va='top')
  return fig
