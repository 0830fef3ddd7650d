"""Patch embedding: a kernel = stride convolution computed as one matmul.

`PatchEmbed` has the parameters of `nn.Conv(features, patch, strides=patch,
padding='VALID')` (`kernel` [ph, pw, C, D], `bias` [D]), so released
checkpoints load into it unchanged, and computes the same function: the image
is cut into non-overlapping ph x pw patches (rows / columns that do not fill a
whole patch are dropped, as VALID padding does) and each flattened patch
[ph * pw * C] is multiplied by the flattened kernel. On XLA:CPU this is
1.4x (forward) to 1.7x (forward + backward) faster than the convolution for
ViT-S/16 at 224 px (measured in docs/performance.md), and exact in fp32.
"""

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp


def patches(x: jax.Array, patch: Sequence[int]) -> jax.Array:
  """[B, H, W, C] -> [B, H // ph, W // pw, ph * pw * C] (row-major patches)."""
  ph, pw = patch
  b, h, w, c = x.shape
  gh, gw = h // ph, w // pw
  x = x[:, :gh * ph, :gw * pw]
  x = x.reshape(b, gh, ph, gw, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh, gw, ph * pw * c)


class PatchEmbed(nn.Module):
  """[B, H, W, C] images -> [B, H // ph, W // pw, features] patch embeddings.

  Attributes:
    features: embedding width D.
    patch_size: (ph, pw), kernel size and stride in pixels.
    dot_general: the product (flax's `dot_general=` hook of dense layers;
      None: `lax.dot_general`).
  """
  features: int
  patch_size: Sequence[int]
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  dot_general: Optional[Callable[..., jax.Array]] = None

  @nn.compact
  def __call__(self, x):
    ph, pw = self.patch_size
    c = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (ph, pw, c, self.features), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.features,),
                      self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    if (ph, pw) != (1, 1):
      x = patches(x, (ph, pw))
    w = kernel.reshape(ph * pw * c, self.features)
    dot_general = self.dot_general or lax.dot_general
    return dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ()))) + bias
