"""Spatial information in patch tokens (Ghiasi et al. 2022, Section 5).

For a feature index (an MLP unit or a token channel, the same index in
every block) this gives its activation map over the patch grid at every
block, and a measure of how local each block's patch tokens are:

  locality = share of the input-gradient mass of patch token p's feature
             that falls on the pixels of patch p itself,

averaged over sampled patch positions and images. A token that still
describes "its" patch has most of its sensitivity there; a token that has
become a global summary (Ghiasi et al.: patch tokens after the last block,
whose attention acts like global average pooling) spreads it over the image,
towards the chance level 1 / n_patches. `neighbourhood` is the same with the
3x3 patches around p.

`top_images` is the evidence of Ghiasi et al. (their
experiments/it9/best_eval.py, get_mask.py and hooks/transformer/vit.py
SaliencyViTGeLUHook): for each block and each MLP unit (the GELU output of
the MLP's first layer, our `mlp_hidden`), the image of a set with the
highest mean activation over the patch tokens (class token excluded), and
that unit's activation map over the patch grid on that image. Maps that
follow the image's objects show spatial information kept in the patch
tokens.
"""

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.analysis import feature_vis
from vit_jax.analysis import modelinfo
from vit_jax.analysis import validate
from vit_jax.models import intermediates

# Feature kinds `top_images` reads from the recorded intermediates.
TOP_KINDS = {'mlp': 'mlp_hidden', 'block': 'tokens'}


def maps(model, params, images, kind: str = 'mlp',
         index: int = 0, layers: Optional[Sequence[int]] = None
         ) -> np.ndarray:
  """Activation map of feature `index` per block, [L, B, h, w].

  Args:
    model, params: a ViT (or Mixer for kind 'block').
    images: float [B, H, W, 3] in [-1, 1].
    kind: 'mlp' (MLP hidden unit) or 'block' (output token channel), or
      'query' / 'key' / 'value'.
    index: the unit / channel, validated for every block.
    layers: blocks to map (default: all).
  """
  n = modelinfo.num_layers(model)
  layers = range(n) if layers is None else layers
  grid = model.patch_grid(images.shape[1:3])
  out = []
  for layer in layers:
    f = feature_vis.check(model, feature_vis.Feature(kind, layer, index))
    a = feature_vis.activations_jit(model, params, jnp.asarray(images), kind,
                                     f.layer)
    out.append(np.asarray(a[..., f.index]).reshape((len(images),) + grid))
  return np.stack(out)


def top_images(model, params, images, units: Sequence[int],
               kind: str = 'mlp', layers: Optional[Sequence[int]] = None,
               batch_size: int = 32) -> dict[str, np.ndarray]:
  """Each unit's top-activating image per block, and its map there.

  One pass over `images` in batches: every forward records all blocks at
  once, and per block, unit and image the mean over the patch tokens (class
  token excluded) is kept; the map of the best image so far is carried
  along, so no second pass is needed.

  Args:
    model, params: a ViT (a Mixer for kind 'block').
    images: float [B, H, W, 3] in [-1, 1] (host array; sent in batches).
    units: unit indices [K], the same in every block.
    kind: 'mlp' (MLP hidden unit after the GELU, the authors' choice) or
      'block' (output token channel).
    layers: blocks to search (default all), [L].
    batch_size: images per forward pass (the last batch is zero-padded so
      that one compilation serves all).

  Returns:
    {'maps': float32 [L, K, h, w], unit k's activation over the patch grid
       on its top image in block layers[l];
     'image': int [L, K], index into `images` of that image (the first on
       ties);
     'mean': float32 [L, K], its mean activation over patch tokens (the
       maximum over images);
     'means': float32 [L, B, K], the mean over patch tokens of every image;
     'layers': [L], 'units': [K]}.
  """
  validate.choice('feature kind', kind, tuple(TOP_KINDS))
  n_layers = modelinfo.num_layers(model)
  layers = [modelinfo.check_layer(model, l) for l in
            (range(n_layers) if layers is None else layers)]
  if not layers or not len(units):
    raise validate.AnalysisError('top_images needs at least one layer and '
                                 f'one unit, got layers {layers}, units '
                                 f'{list(units)}')
  units = [feature_vis.check(model, feature_vis.Feature(kind, layers[0],
                                                        int(u))).index
           for u in units]
  images = np.asarray(images, np.float32)
  b = len(images)
  if b == 0:
    raise validate.AnalysisError('top_images needs at least one image')
  bs = min(batch_size, b)
  short = modelinfo.truncate(model, max(layers))
  grid = model.patch_grid(images.shape[1:3])
  n_l, n_k = len(layers), len(units)
  best = np.full((n_l, n_k), -np.inf, np.float32)
  image = np.zeros((n_l, n_k), np.int64)
  maps_ = np.zeros((n_l, n_k, grid[0] * grid[1]), np.float32)
  means = np.zeros((n_l, b, n_k), np.float32)
  rows, cols = np.arange(n_l)[:, None], np.arange(n_k)[None, :]
  for start in range(0, b, bs):
    chunk = images[start:start + bs]
    n = len(chunk)
    if n < bs:
      chunk = np.concatenate([chunk, np.zeros((bs - n,) + chunk.shape[1:],
                                              chunk.dtype)])
    m, a = _patch_stats(short, params, jnp.asarray(chunk), kind,
                        tuple(layers), jnp.asarray(units))
    m, a = np.asarray(m)[:, :n], np.asarray(a)[:, :n]  # [L,n,K], [L,n,N,K]
    means[:, start:start + n] = m
    j = m.argmax(axis=1)  # [L, K], the first maximum within the batch
    v = np.take_along_axis(m, j[:, None], axis=1)[:, 0]
    better = v > best  # strict: earlier images win ties
    best[better] = v[better]
    image[better] = start + j[better]
    maps_[better] = a[rows, j, :, cols][better]  # [L, K, N] -> [n_better, N]
  return {'maps': maps_.reshape((n_l, n_k) + tuple(grid)), 'image': image,
          'mean': best, 'means': means, 'layers': layers, 'units': units}


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _patch_stats(model, params, images, kind, layers, units):
  """(mean over patch tokens [L, b, K], patch activations [L, b, N, K])."""
  _, inter = intermediates.apply(model, params, images)
  skip = modelinfo.num_prefix(model)
  a = jnp.stack([inter[TOP_KINDS[kind]][l][:, skip:][..., units]
                 for l in layers]).astype(jnp.float32)
  return a.mean(axis=2), a


def sample_positions(grid: Sequence[int], per_side: int = 3) -> np.ndarray:
  """Patch indices on an evenly spaced per_side x per_side sub-grid."""
  h, w = grid
  ys = np.linspace(0, h - 1, per_side + 2)[1:-1].round().astype(int)
  xs = np.linspace(0, w - 1, per_side + 2)[1:-1].round().astype(int)
  return np.asarray([y * w + x for y in ys for x in xs])


def locality(model, params, images, kind: str = 'mlp', index: int = 0,
             layers: Optional[Sequence[int]] = None,
             per_side: int = 3) -> dict[str, np.ndarray]:
  """How local each block's patch tokens are (module doc).

  Args:
    model, params, images, kind, index, layers: as in `maps`.
    per_side: patch positions probed per image: per_side ** 2.

  Returns:
    {'own': [L] share of gradient mass on the token's own patch,
     'neighbourhood': [L] share on its 3x3 patch neighbourhood,
     'chance_own': 1 / n_patches, 'chance_neighbourhood': 9 / n_patches
     (for interior patches)}.
  """
  images = jnp.asarray(images)
  b, hh, ww = images.shape[:3]
  grid = model.patch_grid((hh, ww))
  sh, sw = modelinfo.patch_size(model)
  pos = sample_positions(grid, per_side)
  n_layers = modelinfo.num_layers(model)
  layers = range(n_layers) if layers is None else layers
  res_own, res_nb = [], []
  for layer in layers:
    f = feature_vis.check(model, feature_vis.Feature(kind, layer, index))
    g = _grad_mass(model, params, images, kind, f.layer, f.index,
                   jnp.asarray(pos), (sh, sw), grid)  # [B, K, h, w]
    g = np.asarray(g)
    g = g / np.maximum(g.sum(axis=(-2, -1), keepdims=True), 1e-30)
    o, nb = [], []
    for j, p in enumerate(pos):
      y, x = divmod(int(p), grid[1])
      o.append(g[:, j, y, x])
      nb.append(g[:, j, max(0, y - 1):y + 2, max(0, x - 1):x + 2].sum((-2, -1)))
    res_own.append(float(np.mean(o)))
    res_nb.append(float(np.mean(nb)))
  n = grid[0] * grid[1]
  return {'own': np.asarray(res_own), 'neighbourhood': np.asarray(res_nb),
          'chance_own': 1.0 / n, 'chance_neighbourhood': min(9.0 / n, 1.0)}


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 7, 8))
def _grad_mass(model, params, images, kind, layer, index, pos, patch_px,
               grid):
  """|d feature(token p) / d pixels| summed per patch, [B, K, h, w]."""
  def one(image):
    def feats(x):  # [K] feature of the probed tokens
      a = feature_vis.activations(model, params, x[None], kind, layer)
      return a[0, pos, index]
    jac = jax.jacrev(feats)(image)  # [K, H, W, 3]
    m = jnp.abs(jac).sum(-1)
    k_, hh, ww = m.shape
    m = m[:, :grid[0] * patch_px[0], :grid[1] * patch_px[1]]
    m = m.reshape(k_, grid[0], patch_px[0], grid[1], patch_px[1])
    return m.sum(axis=(2, 4))
  return jax.lax.map(one, images)
