"""Every figure kind of `vit_jax.analysis.figures` on tiny random inputs:
the PNG is written at the module's DPI and at least a minimum size, the
title says what it was asked to say, a colorbar (with its label) exists
where a colour encodes a value, no font is below MIN_FONT, and no text
overlaps another text or an image panel (boxes from matplotlib's
renderer). The overlap check itself is tested on layouts that do overlap."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from vit_jax.analysis import figures

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

RNG = np.random.default_rng(0)
IMG = RNG.uniform(-1, 1, (32, 32, 3)).astype(np.float32)
TITLE = 'Model-X on cat: what is shown, and what the colour means'
LONG = ('Model-X on a_rather_long_image_name, predicted: some class (93 %): '
        'a title long enough to need several lines at this width')


def _attention():
  maps = RNG.random((3, 2, 4, 4))
  return figures.attention_grid(IMG, maps, LONG, ['block 0', 'block 5',
                                                  'block 11'],
                                ['head 0', 'head 1'], 'attention / max')


def _overlays():
  return figures.overlays(
      np.stack([IMG] * 3), RNG.random((3, 4, 4)),
      ['cat\npredicted (93 %):\ntabby', 'dog\npredicted (5.0 %):\nwolf',
       'a_very_long_image_name_x…\npredicted (99.8 %):\nsome class'],
      LONG, 'rollout weight / its maximum in the map', 'rollout')


# kind: (builder, title, colorbar label or None, min (width, height) px)
KINDS = {
    'attention_grid': (_attention, LONG, 'attention / max', (300, 400)),
    'overlays': (_overlays, LONG, 'rollout weight / its maximum in the map',
                 (600, 400)),
    'mean_distance': (lambda: figures.mean_distance(
        RNG.random((4, 3)) * 100, TITLE), TITLE, None, (600, 400)),
    'posemb_similarity': (lambda: figures.posemb_similarity(
        RNG.uniform(-1, 1, (4, 5, 4, 5)), TITLE), TITLE, 'cosine similarity',
                          (300, 250)),
    'filters': (lambda: figures.filters(
        RNG.random((5, 4, 4, 3)), TITLE, [f'PC {k}: 1.0 %' for k in
                                          range(5)], ncols=3), TITLE, None,
                (300, 250)),
    'image_grid': (lambda: figures.image_grid(
        RNG.random((4, 16, 16, 3)), ['mlp block 1 unit 0\n-0.05 → 1.70'] * 4,
        TITLE, ncols=2), TITLE, None, (400, 450)),
    'curves': (lambda: figures.curves(
        [1, 0.3, 0.1, 0.02], {'a, circle window': [80, 60, 20, 1],
                              'b, rectangle window': [80, 50, 10, 1]},
        'cut-off (fraction of the corner radius)', title=TITLE), TITLE, None,
               (600, 400)),
    'image_table': (lambda: figures.image_table(
        RNG.random((2, 3, 16, 16, 3)),
        ['original', 'background only\n(foreground removed)',
         'foreground only\n(background removed)'],
        [['tench: right\ntench (93 %)'] * 3] * 2, TITLE), TITLE, None,
                    (500, 400)),
    'bars': (lambda: figures.bars(
        ['original', 'background only\n(foreground removed)',
         'foreground only\n(background removed)'],
        {'top-1': [92.9, 7.1, 71.4], 'top-5': [100.0, 14.3, 85.7]},
        title=TITLE), TITLE, None, (550, 380)),
    'cls_insertion': (lambda: figures.cls_insertion(
        list(range(5)), [82.7, 64.9, 30.0, 2.5, 0.1], TITLE, 4), TITLE, None,
                      (600, 400)),
    'spatial': (lambda: figures.spatial(
        IMG, RNG.random((3, 4, 4)), [0.67, 0.25, 0.09], TITLE,
        'colour: activation', layers=[0, 5, 11]), TITLE, None, (500, 200)),
    'top_images': (lambda: figures.top_images(
        np.stack([IMG] * 3), RNG.random((2, 2, 4, 4)),
        np.array([[0, 1], [2, 0]]), RNG.random((2, 2)), [0, 11], [0, 1],
        ['German_short-haired_pointer', 'toyshop', 'spaghetti_squash'],
        TITLE, 'colour: activation'), TITLE, None, (500, 350)),
}
# Colorbars without a label, one per map.
UNLABELLED_COLORBARS = {'spatial': 3, 'top_images': 4}


def _flat(s: str) -> str:
  return ' '.join(s.split())


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_figure_kind(kind, tmp_path):
  build, title, cbar_label, (min_w, min_h) = KINDS[kind]
  fig = build()
  assert figures.overlaps(fig) == []
  # the title, wrapped or not, is the suptitle
  assert _flat(title) in _flat(fig.get_suptitle())
  colorbars = [ax for ax in fig.axes if hasattr(ax, '_colorbar')]
  if cbar_label is not None:
    assert len(colorbars) == 1
    assert _flat(colorbars[0].get_ylabel() or
                 colorbars[0].get_xlabel()) == cbar_label
  else:
    assert len(colorbars) == UNLABELLED_COLORBARS.get(kind, 0)
  small = [(t.get_text(), t.get_fontsize())
           for t in fig.findobj(matplotlib.text.Text)
           if t.get_visible() and t.get_text().strip() and
           t.get_fontsize() < figures.MIN_FONT]
  assert not small
  path = figures.save(fig, str(tmp_path / 'sub' / f'{kind}.png'))
  with Image.open(path) as im:
    w, h = im.size
    dpi = im.info['dpi']
  assert w >= min_w and h >= min_h, (w, h)
  assert round(dpi[0]) == figures.DPI
  assert not plt.fignum_exists(fig.number)  # save closes it


def test_attention_grid_rows_columns_and_scaling():
  maps = RNG.random((3, 2, 4, 4))
  fig = _attention()
  axes = [ax for ax in fig.axes if ax.images]
  assert len(axes) == 3 * 3  # input + 2 heads per block row
  assert [ax.get_ylabel() for ax in axes[::3]] == ['block 0', 'block 5',
                                                   'block 11']
  assert [ax.get_title() for ax in axes[:3]] == ['input', 'head 0', 'head 1']
  plt.close(fig)
  np.testing.assert_allclose(figures.scaled_to_max(maps[0, 0]).max(), 1.0)
  np.testing.assert_array_equal(figures.scaled_to_max(np.zeros((2, 2))), 0)


def test_posemb_tiles_are_the_similarities():
  sim = RNG.uniform(-1, 1, (3, 4, 3, 4)).astype(np.float32)
  fig = figures.posemb_similarity(sim, TITLE)
  mosaic = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
  plt.close(fig)
  assert mosaic.shape == (3 * 4 - 1, 4 * 5 - 1)
  for i in range(3):
    for j in range(4):
      np.testing.assert_array_equal(
          mosaic[i * 4:i * 4 + 3, j * 5:j * 5 + 4], sim[i, j])
  assert np.isnan(mosaic[3]).all() and np.isnan(mosaic[:, 4]).all()


@pytest.mark.parametrize('x,scale', [([1, 0.3, 0.1, 0.02], 'log'),
                                     ([0, 0.25, 0.5, 1], 'linear'),
                                     ([1, 0.5, 0.2], 'linear')])
def test_curves_log_x_when_the_values_span_a_decade(x, scale):
  fig = figures.curves(x, {'a': list(range(len(x)))}, 'x')
  ax = fig.axes[0]
  assert ax.get_xscale() == scale
  if scale == 'log':
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        f'{v:g}' for v in x]
  plt.close(fig)


def test_overlaps_finds_titles_over_images():
  # The old attention-grid layout: each row's label a title above its
  # first panel, rows 0.15 of a panel apart at 80 dpi: labels ran into the
  # images above.
  fig, axes = plt.subplots(3, 2, figsize=(2.6, 3.9), dpi=80)
  for i in range(3):
    for j in range(2):
      axes[i, j].imshow(RNG.random((8, 8)))
      axes[i, j].axis('off')
    axes[i, 0].set_title(f'block {i}\nsecond line', fontsize=12)
  fig.subplots_adjust(wspace=0.03, hspace=0.05)
  found = figures.overlaps(fig)
  plt.close(fig)
  assert any("'block 1 second line' overlaps an image panel" == f
             for f in found), found


def test_overlaps_finds_text_on_text_and_passes_a_clean_figure():
  fig, ax = plt.subplots(figsize=(4, 3))
  ax.plot([0, 1], [0, 1])
  ax.set_title('a title')
  ax.text(0.5, 1.02, 'on the title', transform=ax.transAxes, ha='center')
  found = figures.overlaps(fig)
  plt.close(fig)
  assert "'a title' overlaps 'on the title'" in found
  fig, ax = plt.subplots(figsize=(4, 3))
  ax.imshow(RNG.random((8, 8)))
  ax.set_title('a title')
  ax.text(4, 4, 'inside its own image', ha='center')  # allowed
  assert figures.overlaps(fig) == []
  plt.close(fig)


def test_save_warns_about_overlaps(tmp_path, capsys):
  fig, ax = plt.subplots(figsize=(3, 3))
  ax.imshow(RNG.random((8, 8)))
  fig.text(0.5, 0.5, 'over the image', ha='center')
  figures.save(fig, str(tmp_path / 'x.png'))
  err = capsys.readouterr().err
  assert "x.png: 1 overlapping texts, e.g. 'over the image' overlaps an " \
         'image panel' in err


def test_short_names():
  assert figures.short('toyshop') == 'toyshop'
  assert figures.short('German_short-haired_pointer', 10) == 'German_sh…'
