"""GroupNorm with its statistics reduced in two stages, for the ResNet's
`group_norm_cls` hook (`vit_jax.models.resnet`).

Over H * W to [B, C] first, then within each group: XLA:CPU does
`nn.GroupNorm`'s one-pass reduction over (H, W, C / groups) more slowly. On
a CPU in float32 the backward is written out (`_group_norm`). Same
parameters and function as `nn.GroupNorm(num_groups=32, epsilon=1e-6)`.
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


class TwoStageGroupNorm(nn.Module):
  """`nn.GroupNorm` for [B, H, W, C] inputs: same `scale` / `bias` [C], same
  function (32 groups, eps 1e-6, float32 statistics, variance as
  E[x^2] - E[x]^2), statistics reduced in two stages: over H * W to [B, C],
  then within each group. XLA:CPU does the one-pass reduction over
  (H, W, C / groups) ~2.7x slower (in an R26+S/32 training step at batch 32
  it took ~0.55 s). On CPU in float32 the backward is written out
  (`_group_norm`).
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    b, c, g = x.shape[0], x.shape[-1], self.num_groups
    if c % g:
      raise ValueError(f'{c} channels are not divisible into {g} groups')
    scale = self.param('scale', self.scale_init, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    if (jax.default_backend() == 'cpu' and x.ndim == 4 and
        all(t.dtype == jnp.float32 for t in (x, scale, bias)) and
        self.dtype in (None, jnp.float32)):
      return _group_norm(x, scale, bias, g, self.epsilon)
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
    flat = x.reshape(b, -1, c).astype(stats_dtype)           # [B, HW, C]
    y = _group_norm_fwd(flat, scale, bias, g, self.epsilon)[0]
    dtype = self.dtype or jnp.result_type(x, scale, bias)
    return y.reshape(x.shape).astype(dtype)


def _group_stats(flat, groups, eps):
  """flat [B, N, C] -> (mean, 1 / sqrt(var + eps)), each [B, groups]."""
  b, n, c = flat.shape
  per_group = lambda s: s.reshape(b, groups, c // groups).sum(-1) / (
      n * (c // groups))
  mean = per_group(jnp.sum(flat, axis=1))
  var = jnp.maximum(per_group(jnp.sum(flat * flat, axis=1)) - mean ** 2, 0)
  return mean, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _group_norm(x, scale, bias, groups, eps):
  """GroupNorm of float32 x [B, H, W, C] with scale, bias [C] (CPU path).

  Same function as `GroupNorm`'s general path; the backward is written out
  with two reductions over H * W (sum dy, sum dy * x, to [B, C]) and one
  elementwise pass, where XLA:CPU's autodiff makes three to four passes.
  """
  return _group_norm_fwd(x, scale, bias, groups, eps)[0]


def _per_channel(t, c):
  """[B, G] -> [B, 1, C]: each group's value repeated over its channels."""
  return jnp.repeat(t, c // t.shape[1], axis=-1)[:, None, :]


def _group_norm_fwd(x, scale, bias, groups, eps):
  """(GroupNorm of x [B, ..., C], residuals); also `GroupNorm`'s general path."""
  b, c = x.shape[0], x.shape[-1]
  flat = x.reshape(b, -1, c)
  mean, rstd = _group_stats(flat, groups, eps)
  y = (flat - _per_channel(mean, c)) * (_per_channel(rstd, c) * scale) + bias
  return y.reshape(x.shape), (x, scale, mean, rstd)


def _group_norm_bwd(groups, eps, res, g):
  """With xhat = (x - mean) * rstd and h = dy * scale, per group of n
  elements: dx = rstd * (h - sum(h) / n - xhat * sum(h * xhat) / n)."""
  del eps
  x, scale, mean, rstd = res
  b, c = x.shape[0], x.shape[-1]
  flat, dy = x.reshape(b, -1, c), g.reshape(b, -1, c)
  n = flat.shape[1] * (c // groups)
  s1 = jnp.sum(dy, axis=1)                                   # [B, C]
  s2 = jnp.sum(dy * flat, axis=1)                            # [B, C]
  mean_c, rstd_c = _per_channel(mean, c)[:, 0], _per_channel(rstd, c)[:, 0]
  dy_xhat = rstd_c * (s2 - mean_c * s1)                      # sum dy * xhat
  per_group = lambda t: t.reshape(b, groups, c // groups).sum(-1) / n
  sum_h = _per_channel(per_group(scale * s1), c)             # [B, 1, C]
  sum_h_xhat = _per_channel(per_group(scale * dy_xhat), c)
  xhat = (flat - mean_c[:, None]) * rstd_c[:, None]
  dx = rstd_c[:, None] * (dy * scale - sum_h - xhat * sum_h_xhat)
  return dx.reshape(x.shape), dy_xhat.sum(0), s1.sum(0)


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)
