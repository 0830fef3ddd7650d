"""Attention maps, attention rollout and mean attention distance.

Inputs are the per-block attention weights that `intermediates.apply`
returns: a list over blocks of [B, heads, N, N] (query, key), N = prefix +
h*w tokens, the class token (if any) at index 0.

  cls_maps(attn, grid)            [L, B, heads, h, w] CLS row over patches
  rollout(attn)                   [B, N, N] (Abnar & Zuidema 2020)
  rollout_map(attn, grid)         [B, h, w] CLS (or mean-query) row of it
  mean_distance(attn, grid, px)   [L, heads] in pixels (ViT paper Fig. 7)
"""

from typing import Sequence

import jax.numpy as jnp
import numpy as np


def _stack(attention) -> jnp.ndarray:
  """List over blocks of [B, H, N, N] -> [L, B, H, N, N] (float32)."""
  return jnp.stack([jnp.asarray(a, jnp.float32) for a in attention])


def cls_maps(attention: Sequence, grid: Sequence[int],
             num_prefix: int = 1) -> jnp.ndarray:
  """Attention of the class token over the patch grid, per block and head.

  Args:
    attention: list over L blocks of [B, heads, N, N].
    grid: (h, w) patch grid, h * w = N - num_prefix.
    num_prefix: 1 with a class token; with 0 (GAP models) the map is the
      attention each patch receives, averaged over all queries.

  Returns:
    [L, B, heads, h, w]; with a class token each map sums to at most 1 (the
    rest goes to the class token itself).
  """
  a = _stack(attention)
  if num_prefix:
    rows = a[..., 0, num_prefix:]
  else:
    rows = a.mean(axis=-2)
  return rows.reshape(rows.shape[:-1] + tuple(grid))


def rollout(attention: Sequence, residual: float = 0.5) -> jnp.ndarray:
  """Attention rollout: prod over blocks of (1-r)*mean_heads(A) + r*I.

  Rows of each mixed matrix are renormalized to sum to one; the product runs
  from the first block (rightmost) to the last: R = Â_L ... Â_1.

  Args:
    attention: list over L blocks of [B, heads, N, N].
    residual: weight r of the identity (the residual connection); 0.5 in
      Abnar & Zuidema 2020.

  Returns:
    [B, N, N]: row i says how much of token i's final representation comes
    from each input token.
  """
  a = _stack(attention).mean(axis=2)  # [L, B, N, N]
  n = a.shape[-1]
  eye = jnp.eye(n, dtype=a.dtype)
  a = (1.0 - residual) * a + residual * eye
  a = a / a.sum(axis=-1, keepdims=True)
  out = jnp.broadcast_to(eye, a.shape[1:])
  for layer in a:
    out = layer @ out
  return out


def rollout_map(attention: Sequence, grid: Sequence[int], num_prefix: int = 1,
                residual: float = 0.5) -> jnp.ndarray:
  """The class token's rollout row over the patches, [B, h, w].

  Without a class token, the rollout averaged over all (patch) queries.
  """
  r = rollout(attention, residual)
  rows = r[:, 0, num_prefix:] if num_prefix else r.mean(axis=1)
  return rows.reshape((r.shape[0],) + tuple(grid))


def patch_distances(grid: Sequence[int],
                    patch_px: Sequence[int] = (1, 1)) -> np.ndarray:
  """Euclidean distance between patch centres in pixels, [h*w, h*w]."""
  h, w = grid
  yy, xx = np.meshgrid(np.arange(h) * patch_px[0], np.arange(w) * patch_px[1],
                       indexing='ij')
  p = np.stack([yy.ravel(), xx.ravel()], -1).astype(np.float64)
  return np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))


def mean_distance(attention: Sequence, grid: Sequence[int],
                  patch_px: Sequence[int], num_prefix: int = 1) -> np.ndarray:
  """Mean attention distance per block and head, in pixels.

  For each patch query, the distance to every patch key weighted by the
  attention, the weights renormalized over the patch keys (the class token
  has no position); averaged over queries and images. This is the "attention
  distance" of the ViT paper (Fig. 7 right), its analogue of receptive field
  size.

  Args:
    attention: list over L blocks of [B, heads, N, N].
    grid: (h, w) patch grid.
    patch_px: pixels per token (height, width), e.g. (16, 16).
    num_prefix: tokens before the patches (1 with a class token).

  Returns:
    float64 [L, heads].
  """
  d = jnp.asarray(patch_distances(grid, patch_px), jnp.float32)
  a = _stack(attention)[..., num_prefix:, num_prefix:]  # [L, B, H, n, n]
  a = a / a.sum(axis=-1, keepdims=True)
  per_query = (a * d).sum(axis=-1)  # [L, B, H, n]
  return np.asarray(per_query.mean(axis=(1, 3)), np.float64)
