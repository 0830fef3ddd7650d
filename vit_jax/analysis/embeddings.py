"""Position-embedding similarity and patch-embedding principal components.

The ViT paper's Figure 7 (left: "RGB embedding filters, first 28 principal
components"; centre: "position embedding similarity").

  posemb_similarity(posemb, grid)   [h, w, h, w] cosine similarities
  patch_pca(kernel, n)              components [n, ph, pw, 3], variance ratio
"""

from typing import Sequence

import numpy as np

from vit_jax.analysis import validate


def posemb_similarity(posemb, grid: Sequence[int],
                      num_prefix: int = 1) -> np.ndarray:
  """Cosine similarity of each position's embedding with every other one.

  Args:
    posemb: [1, N, D] or [N, D] learned position embeddings (the
      `Transformer/posembed_input/pos_embedding` parameter).
    grid: (h, w) patch grid with h * w = N - num_prefix.
    num_prefix: leading rows that are not patches (class token) to drop.

  Returns:
    float64 [h, w, h, w]: out[i, j] is the (h, w) map of similarities of
    position (i, j) with all positions (a "grid of grids").
  """
  p = np.asarray(posemb, np.float64)
  p = p.reshape(-1, p.shape[-1])[num_prefix:]
  h, w = grid
  if p.shape[0] != h * w:
    raise validate.AnalysisError(
        f'position embedding has {p.shape[0]} patch rows, grid {h}x{w} needs '
        f'{h * w}')
  p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
  return (p @ p.T).reshape(h, w, h, w)


def patch_pca(kernel, n: int = 28) -> tuple[np.ndarray, np.ndarray]:
  """Principal components of the patch-embedding filters.

  Each of the D output channels of the `embedding` conv is one filter of
  ph * pw * c weights; the filters are centred over D and decomposed with an
  SVD.

  Args:
    kernel: [ph, pw, c, D] conv kernel (HWIO).
    n: number of components, at most min(D, ph * pw * c).

  Returns:
    (components [n, ph, pw, c] with unit norm, explained variance ratio [n]).
  """
  k = np.asarray(kernel, np.float64)
  ph, pw, c, d = k.shape
  x = k.reshape(ph * pw * c, d).T  # [D, ph*pw*c], one filter per row
  if not 1 <= n <= min(x.shape):
    raise validate.AnalysisError(
        f'number of components {n} is out of range: allowed 1..{min(x.shape)}')
  x = x - x.mean(axis=0, keepdims=True)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  var = s ** 2
  return vt[:n].reshape(n, ph, pw, c), var[:n] / var.sum()
