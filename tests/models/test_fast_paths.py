"""Fast paths against the reference implementations they replace: PatchEmbed
vs flax's convolution, head-major attention vs `jax.nn.dot_product_attention`
and its hand-written gradient vs autodiff,
ResNet's StdConv as im2col + matmul vs the convolution, its GroupNorm vs
flax's."""

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


@pytest.mark.parametrize('nq,nk', [(197, 197), (1, 50)])
def test_attention_gradient_equals_autodiff(nq, nk):
  """The hand-written attention backward (FlashAttention's softmax gradient)
  against autodiff through `_head_major_attention`; float32 and bfloat16."""
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (2, nq, 3, 16))
  k = jax.random.normal(keys[1], (2, nk, 3, 16))
  v = jax.random.normal(keys[2], (2, nk, 3, 16))
  g = jax.random.normal(keys[3], (2, nq, 3, 16))
  ref = lambda q, k, v: vit._head_major_attention(q, k, v, lambda w: w)[0]  # pylint: disable=protected-access
  ours = vit._head_major_attention_output  # pylint: disable=protected-access
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
    args = [t.astype(dtype) for t in (q, k, v)]
    loss = lambda f: lambda *a: jnp.sum(f(*a).astype(jnp.float32) * g)
    np.testing.assert_allclose(ours(*args).astype(jnp.float32),
                               ref(*args).astype(jnp.float32), rtol=0,
                               atol=tol)
    grads = jax.grad(loss(ours), argnums=(0, 1, 2))(*args)
    grads_ref = jax.grad(loss(ref), argnums=(0, 1, 2))(*args)
    for got, want in zip(grads, grads_ref):
      assert got.dtype == want.dtype == dtype
      np.testing.assert_allclose(
          got.astype(jnp.float32), want.astype(jnp.float32), rtol=0,
          atol=tol * float(jnp.abs(want.astype(jnp.float32)).max()))


@pytest.mark.parametrize('kernel,strides,size', [
    ((1, 1), (1, 1), (8, 8)), ((1, 1), (2, 2), (7, 9)),
    ((3, 3), (1, 1), (8, 8)), ((3, 3), (2, 2), (7, 9)),
    ((7, 7), (2, 2), (15, 13)), ((3, 3), (2, 2), (8, 8))])
@pytest.mark.parametrize('openblas', [False, True])
def test_std_conv_matmul_equals_the_convolution(kernel, strides, size,
                                                openblas):
  """ResNet's StdConv runs as a matmul (im2col + XLA's product, or with the
  OpenBLAS kernels the implicit-GEMM convolution): same output and gradients
  as the convolution path (flax / XLA), 'SAME' padding, odd sizes included."""
  from vit_jax.perf import cpu_gemm  # pylint: disable=g-import-not-at-top
  from vit_jax.models import resnet  # pylint: disable=g-import-not-at-top
  with cpu_gemm.use(openblas):
    _check_std_conv(resnet, kernel, strides, size,
                    openblas and kernel != (1, 1))


def _check_std_conv(resnet, kernel, strides, size, implicit_gemm):
  class ConvPath(resnet.StdConv):
    def _as_matmul(self):
      return False

  x = jax.random.normal(jax.random.key(0), (2, *size, 16))
  fast = resnet.StdConv(32, kernel, strides, use_bias=False)
  slow = ConvPath(32, kernel, strides, use_bias=False)
  params = fast.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, slow.init(jax.random.key(1), x))
  from vit_jax.perf import cpu_gemm  # pylint: disable=g-import-not-at-top
  jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda p: jnp.sum(fast.apply(p, x))))(params))
  assert (cpu_gemm.CONV_TARGET in jaxpr) == implicit_gemm
  assert (cpu_gemm.CONV_KERNEL_GRAD_TARGET in jaxpr) == implicit_gemm
  ref = slow.apply(params, x)
  np.testing.assert_allclose(fast.apply(params, x), ref, rtol=0,
                             atol=1e-5 * float(jnp.abs(ref).max()))
  grad = lambda m: jax.grad(lambda p, x: jnp.sum(m.apply(p, x) ** 2),
                            argnums=(0, 1))(params, x)
  (g_fast, dx_fast), (g_slow, dx_slow) = grad(fast), grad(slow)
  np.testing.assert_allclose(dx_fast, dx_slow, rtol=0,
                             atol=1e-5 * float(jnp.abs(dx_slow).max()))
  g_fast, g_slow = g_fast['params']['kernel'], g_slow['params']['kernel']
  # Weight standardization sums terms of ~1e3 into ~1: compare at float32
  # rounding of the largest entry.
  np.testing.assert_allclose(g_fast, g_slow, rtol=0,
                             atol=1e-5 * float(jnp.abs(g_slow).max()))
  assert float(jnp.abs(g_slow).max()) > 1.0


@pytest.mark.parametrize('kernel,strides,padding', [
    ((3, 3), (1, 1), 'VALID'), ((2, 2), (1, 1), 'SAME'),
    ((2, 3), (1, 1), 'VALID'), ((3, 3), (2, 2), 'VALID')])
def test_cpu_conv_gradients_equal_autodiff_of_xla(kernel, strides, padding):
  """`resnet._conv_cpu` (the OpenBLAS implicit-GEMM convolution, whose input
  gradient at stride 1 is the flipped forward) against XLA's convolution and
  its autodiff, for paddings the models do not use: 'VALID', and the
  asymmetric 'SAME' of an even kernel."""
  from vit_jax.perf import cpu_gemm  # pylint: disable=g-import-not-at-top
  from vit_jax.models import resnet  # pylint: disable=g-import-not-at-top
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, 9, 8, 5))
  w = jax.random.normal(kk, (*kernel, 5, 7))
  ref = lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision='highest')
  conv_cpu = resnet._conv_cpu  # pylint: disable=protected-access
  with cpu_gemm.use(True):
    ours = lambda x, w: conv_cpu(x, w, strides, padding)
    y, vjp = jax.vjp(ours, x, w)
    assert cpu_gemm.CONV_TARGET in str(jax.make_jaxpr(ours)(x, w))
  y_ref, vjp_ref = jax.vjp(ref, x, w)
  np.testing.assert_allclose(y, y_ref, rtol=0,
                             atol=1e-5 * float(jnp.abs(y_ref).max()))
  g = jax.random.normal(kg, y_ref.shape)
  for got, want in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize('shape,dtype', [
    ((2, 8, 8, 64), jnp.float32), ((3, 5, 7, 32), jnp.float32),
    ((2, 4, 4, 256), jnp.float32), ((2, 6, 6, 64), jnp.bfloat16)])
def test_group_norm_equals_flax(shape, dtype):
  """ResNet's two-stage GroupNorm: flax's parameters, outputs, gradients
  (w.r.t. input, scale and bias) and output dtype."""
  from vit_jax.models import resnet  # pylint: disable=g-import-not-at-top
  x = (jax.random.normal(jax.random.key(0), shape) * 3 + 1).astype(dtype)
  ours, ref = resnet.GroupNorm(), nn.GroupNorm()
  params = ours.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, ref.init(jax.random.key(1), x))
  params = jax.tree.map(  # not the identity initialization
      lambda t: t + jax.random.normal(jax.random.key(2), t.shape), params)
  y, y_ref = ours.apply(params, x), ref.apply(params, x)
  assert y.dtype == y_ref.dtype
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(y.astype(jnp.float32), y_ref.astype(jnp.float32),
                             rtol=0, atol=tol * float(jnp.abs(y_ref).max()))
  if dtype != jnp.float32:
    return
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  grads = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  grads_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(g, g_ref, rtol=0,
                               atol=1e-5 * float(jnp.abs(g_ref).max()))
  assert resnet.GroupNorm(dtype=jnp.bfloat16).apply(
      params, x).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='48 channels'):
    resnet.GroupNorm().init(jax.random.key(0), jnp.zeros((1, 2, 2, 48)))


def test_std_conv_keeps_native_convolutions_off_cpu(monkeypatch):
  """On GPU/TPU only 1x1 StdConvs become matmuls (im2col costs memory)."""
  from vit_jax.models import resnet  # pylint: disable=g-import-not-at-top
  assert resnet.StdConv(8, (3, 3))._as_matmul()  # pylint: disable=protected-access
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert not resnet.StdConv(8, (3, 3))._as_matmul()  # pylint: disable=protected-access
  assert resnet.StdConv(8, (1, 1), (2, 2))._as_matmul()  # pylint: disable=protected-access


@pytest.mark.parametrize('shape', [(3, 3, 16, 8), (1, 1, 64, 32),
                                   (7, 7, 3, 16)])
def test_weight_standardization_gradient_is_the_autodiff_one(shape):
  """StdConv's hand-written weight-standardization backward equals autodiff
  of (w - mean) / (std + eps) (float64), and stays finite on a constant
  output column, where autodiff's is NaN."""
  from vit_jax.models import resnet  # pylint: disable=g-import-not-at-top

  def reference(w):
    w = w - jnp.mean(w, axis=(0, 1, 2))
    return w / (jnp.std(w, axis=(0, 1, 2)) + 1e-5)
  ours = lambda w: resnet.weight_standardize(w, axis=[0, 1, 2], eps=1e-5)
  with jax.enable_x64():
    w = jax.random.normal(jax.random.key(0), shape, jnp.float64) * 0.3 + 0.1
    g = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, w), jax.vjp(reference, w)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=0, atol=1e-12)
    assert float(jnp.abs(vjp(g)[0]).max()) > 1e-3
    flat = w.at[..., 0].set(0.5)  # column 0 constant
    grad = jax.vjp(ours, flat)[1](g)[0]
    grad_ref = jax.vjp(reference, flat)[1](g)[0]
    assert bool(jnp.isnan(grad_ref[..., 0]).any())
    assert bool(jnp.isfinite(grad).all())
    np.testing.assert_allclose(grad[..., 1:], grad_ref[..., 1:], rtol=0,
                               atol=1e-9)
