"""Fast paths against the reference implementations they replace: PatchEmbed
vs flax's convolution, head-major attention vs `jax.nn.dot_product_attention`,
the 1x1 StdConv matmul vs the convolution."""

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


@pytest.mark.parametrize('strides,size', [((1, 1), (8, 8)), ((2, 2), (8, 8)),
                                          ((2, 2), (7, 9))])
def test_pointwise_std_conv_equals_the_convolution(strides, size):
  """ResNet's 1x1 StdConv runs as a matmul: same output as the conv path."""
  from vit_jax.models import resnet  # pylint: disable=g-import-not-at-top

  class ConvPath(resnet.StdConv):
    def _is_pointwise(self):
      return False

  x = jax.random.normal(jax.random.key(0), (2, *size, 16))
  fast = resnet.StdConv(32, (1, 1), strides, use_bias=False)
  slow = ConvPath(32, (1, 1), strides, use_bias=False)
  params = fast.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, slow.init(jax.random.key(1), x))
  np.testing.assert_allclose(fast.apply(params, x), slow.apply(params, x),
                             rtol=1e-5, atol=1e-5)
  grad = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params)
  g_fast = grad(fast)['params']['kernel']
  g_slow = grad(slow)['params']['kernel']
  # Weight standardization sums terms of ~1e3 into ~1: compare at float32
  # rounding of the largest entry.
  np.testing.assert_allclose(g_fast, g_slow, rtol=0,
                             atol=1e-5 * float(jnp.abs(g_slow).max()))
  assert float(jnp.abs(g_slow).max()) > 1.0
