"""Weight standardization with a written-out gradient, for StdConv's
`standardize` hook (`vit_jax.models.resnet`).

For an HWIO kernel standardized over all but the output axis, XLA:CPU
compiles the autodiff gradient of (w - mean) / (std + eps) into slow column
reductions (a [1, 1, 1024, 2048] kernel: 21 ms against 5).
"""

import functools

import jax
import jax.numpy as jnp

from vit_jax.models import resnet


def weight_standardize(w, axis, eps):
  """`resnet.weight_standardize`, with the hand-written gradient when `axis`
  is every axis but the last."""
  axes = sorted(a % w.ndim for a in axis)
  if axes == list(range(w.ndim - 1)):
    return _standardize_columns(w.reshape(-1, w.shape[-1]), eps).reshape(
        w.shape)
  return resnet.weight_standardize(w, axis, eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _standardize_columns(w, eps):
  """w [K, O] -> (w - mean) / (std + eps), statistics over K per column."""
  return _standardize_columns_fwd(w, eps)[0]


def _standardize_columns_fwd(w, eps):
  c = w - jnp.mean(w, axis=0)
  std = jnp.sqrt(jnp.mean(c * c, axis=0))
  out = c / (std + eps)
  return out, (out, std)


def _standardize_columns_bwd(eps, res, g):
  """With out = c / d, c = w - mean(w), d = std + eps, std^2 = mean(c^2):
  dc = g / d - out * sum_K(g out) / (K std), dw = dc - mean_K(dc). A
  constant column (std = 0) gets dc = g / eps (the autodiff one is NaN)."""
  out, std = res
  d, k = std + eps, out.shape[0]
  a = jnp.sum(g * out, axis=0)
  safe_std = jnp.where(std > 0, std, 1.0)
  dc = g / d + out * jnp.where(std > 0, -a / (safe_std * k), 0.0)
  return (dc - jnp.mean(dc, axis=0),)


_standardize_columns.defvjp(_standardize_columns_fwd, _standardize_columns_bwd)
