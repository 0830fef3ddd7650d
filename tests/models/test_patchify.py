"""PatchEmbed (matmul) against flax's convolution, and the head-major attention
against `jax.nn.dot_product_attention`, both implementations nobody here wrote."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import patchify
from vit_jax.models import vit


@pytest.mark.parametrize('patch,size,channels', [
    ((16, 16), (64, 48), 3),
    ((16, 16), (70, 37), 3),   # rows/columns that do not fill a patch
    ((4, 2), (12, 10), 5),     # non-square patches
    ((1, 1), (7, 7), 8),       # the hybrids' 1x1 projection
])
def test_patch_embed_equals_valid_conv(patch, size, channels):
  x = jax.random.normal(jax.random.key(0), (2, *size, channels))
  ours = patchify.PatchEmbed(24, patch)
  conv = nn.Conv(24, patch, strides=patch, padding='VALID')
  params = ours.init(jax.random.key(1), x)
  ref_shapes = jax.tree.map(jnp.shape, conv.init(jax.random.key(1), x))
  assert jax.tree.map(jnp.shape, params) == ref_shapes  # checkpoints load
  params = jax.tree.map(  # a non-zero bias
      lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape),
      params)
  np.testing.assert_allclose(ours.apply(params, x), conv.apply(params, x),
                             rtol=1e-5, atol=1e-5)


def test_patch_embed_bfloat16_compute():
  x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
  m = patchify.PatchEmbed(8, (16, 16), dtype=jnp.bfloat16)
  params = m.init(jax.random.key(1), x)
  assert params['params']['kernel'].dtype == jnp.float32
  assert m.apply(params, x).dtype == jnp.bfloat16


@pytest.mark.parametrize('nq,nk', [(197, 197), (1, 50)])
def test_head_major_attention_equals_jax(nq, nk):
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (2, nq, 3, 16))
  k = jax.random.normal(keys[1], (2, nk, 3, 16))
  v = jax.random.normal(keys[2], (2, nk, 3, 16))
  y, w = vit._head_major_attention(q, k, v, lambda w: w)  # pylint: disable=protected-access
  np.testing.assert_allclose(
      y, jax.nn.dot_product_attention(q, k, v, implementation='xla'),
      rtol=1e-5, atol=1e-5)
  assert w.shape == (2, 3, nq, nk) and w.dtype == jnp.float32
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
