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
"""

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.analysis import feature_vis
from vit_jax.analysis import modelinfo


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
