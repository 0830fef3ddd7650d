"""The OpenBLAS matmul kernel against numpy and XLA's products: values,
gradients, the dense-layer dispatch, and whole models with the kernel's
`dot_general` hook (`config.perf.cpu_gemm='on'`) against the stock models.

A machine without a C++ compiler fails here (the kernel is part of the CPU
fast path); the products still work there, through XLA.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden_inputs
from tests.tiny_configs import random_model_params
from vit_jax.models import mixer
from vit_jax.models import vit
from vit_jax.perf import cpu_gemm
from vit_jax.perf import flops


def _op(x, trans):
  return np.swapaxes(x, -1, -2) if trans else x


def _has_kernel_call(fn, *args) -> bool:
  return cpu_gemm.TARGET in str(jax.make_jaxpr(fn)(*args))


def test_kernel_builds_and_registers():
  assert cpu_gemm._registered(), 'see the warning: the kernel did not build'
  assert cpu_gemm.available()
  assert not cpu_gemm.applies(jnp.ones((2, 2), jnp.bfloat16))
  assert not cpu_gemm.applies(jnp.ones((0, 2)))


@pytest.mark.parametrize('a_shape,b_shape', [
    ((5, 7), (7, 3)),
    ((1, 1), (1, 1)),
    ((300, 70), (70, 90)),        # split into row blocks over the threads
    ((2, 3, 40, 33), (33, 17)),   # batch of a, shared b
    ((2, 3, 40, 33), (2, 3, 33, 17)),  # batched b
    ((4, 197, 64), (4, 64, 197)),
])
@pytest.mark.parametrize('trans_a', [False, True])
@pytest.mark.parametrize('trans_b', [False, True])
def test_gemm_equals_numpy(a_shape, b_shape, trans_a, trans_b):
  rng = np.random.default_rng(0)
  a = rng.standard_normal(a_shape, dtype=np.float32)
  b = rng.standard_normal(b_shape, dtype=np.float32)
  a_in, b_in = _op(a, trans_a).copy(), _op(b, trans_b).copy()
  got = jax.jit(functools.partial(cpu_gemm.gemm, trans_a=trans_a,
                                  trans_b=trans_b))(a_in, b_in)
  want = np.matmul(a.astype(np.float64), b.astype(np.float64))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gemm_shape_errors_name_both_shapes():
  a, b = jnp.ones((2, 4, 5)), jnp.ones((3, 5, 6))  # batch 2 vs 3
  with pytest.raises(Exception, match=r'batch of b.*\[2, 4, 5\].*\[3, 5, 6\]'):
    jax.jit(cpu_gemm.gemm)(a, b).block_until_ready()


@pytest.mark.parametrize('a_shape,b_shape', [
    ((37, 20), (20, 11)),
    ((3, 37, 20), (20, 11)),
    ((3, 37, 20), (3, 20, 11)),
])
def test_matmul_gradients_equal_autodiff(a_shape, b_shape):
  rng = np.random.default_rng(0)
  a = rng.standard_normal(a_shape, np.float32)
  b = rng.standard_normal(b_shape, np.float32)
  w = rng.standard_normal(a_shape[:-1] + b_shape[-1:], np.float32)
  loss = lambda mm: lambda a, b: jnp.sum(w * mm(a, b) ** 2)
  got = jax.jit(jax.value_and_grad(loss(cpu_gemm.matmul), (0, 1)))(a, b)
  want = jax.jit(jax.value_and_grad(loss(jnp.matmul), (0, 1)))(a, b)
  for g, x in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, x, rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize('trans_a,trans_b', [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_batched_matmul_equals_einsum(trans_a, trans_b):
  rng = np.random.default_rng(1)
  a = rng.standard_normal((2, 3, 19, 8), np.float32)
  b = rng.standard_normal((2, 3, 8, 23), np.float32)
  want = np.einsum('bhij,bhjk->bhik', a.astype(np.float64), b)
  a_in = jnp.asarray(_op(a, trans_a).copy())
  b_in = jnp.asarray(_op(b, trans_b).copy())
  fn = lambda x, y: cpu_gemm.batched_matmul(x, y, trans_a, trans_b)
  assert _has_kernel_call(fn, a_in, b_in)
  np.testing.assert_allclose(jax.jit(fn)(a_in, b_in), want,
                             rtol=1e-5, atol=1e-5)
  # bf16 operands go through lax.dot_general
  bf = lambda x: x.astype(jnp.bfloat16)
  assert not _has_kernel_call(fn, bf(a_in), bf(b_in))


def test_dot_general_takes_the_kernel_only_where_it_applies():
  x = jnp.ones((4, 6, 8))
  plain = lambda x, w: cpu_gemm.dot_general(x, w, (((2,), (0,)), ((), ())))
  assert _has_kernel_call(plain, x, jnp.ones((8, 5)))
  heads_in = lambda y, w: cpu_gemm.dot_general(  # DenseGeneral(axis=(-2,-1))
      y, w, (((1, 2), (0, 1)), ((), ())))
  assert _has_kernel_call(heads_in, x, jnp.ones((6, 8, 5)))
  # Not covered: bf16, batch dims, contraction not trailing / leading.
  assert not _has_kernel_call(plain, x.astype(jnp.bfloat16),
                              jnp.ones((8, 5), jnp.bfloat16))
  batched = lambda x, w: cpu_gemm.dot_general(x, w, (((2,), (1,)),
                                                     ((0,), (0,))))
  assert not _has_kernel_call(batched, x, jnp.ones((4, 8, 5)))
  leading = lambda x, w: cpu_gemm.dot_general(x, w, (((0,), (0,)), ((), ())))
  assert not _has_kernel_call(leading, x, jnp.ones((4, 5)))
  np.testing.assert_allclose(
      jax.jit(heads_in)(x, jnp.arange(240.).reshape(6, 8, 5)),
      jax.lax.dot_general(x, jnp.arange(240.).reshape(6, 8, 5),
                          (((1, 2), (0, 1)), ((), ()))), rtol=1e-6)


def _lax_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision='highest')


# (batch, H, W, C, O, kernel, strides, ((top, bottom), (left, right))): odd
# and even sizes, asymmetric and no padding, and two shapes large enough for
# the blocked paths (more than 2^22 unfolded floats), the others unfolded
# whole.
_CONV_CASES = [
    (2, 9, 7, 3, 5, (3, 3), (1, 1), ((1, 1), (1, 1))),
    (2, 10, 11, 4, 6, (7, 7), (2, 2), ((3, 3), (2, 3))),
    (3, 8, 8, 5, 4, (3, 3), (2, 2), ((0, 1), (0, 1))),
    (1, 6, 5, 2, 3, (2, 3), (1, 2), ((0, 0), (0, 0))),
    (2, 64, 64, 64, 16, (3, 3), (1, 1), ((1, 1), (1, 1))),
    (1, 230, 229, 3, 8, (7, 7), (2, 2), ((2, 3), (3, 3))),
]


@pytest.mark.parametrize('b,h,w,c,o,kernel_size,strides,padding', _CONV_CASES)
def test_conv_and_kernel_gradient_equal_xla(b, h, w, c, o, kernel_size,
                                            strides, padding):
  """The implicit-GEMM convolution and its kernel gradient against XLA's
  convolution and autodiff (float32 at highest precision)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((b, h, w, c), np.float32)
  kernel = rng.standard_normal((*kernel_size, c, o), np.float32)
  conv = lambda k: _lax_conv(x, k, strides, padding)
  dy = rng.standard_normal(jax.eval_shape(conv, kernel).shape, np.float32)

  @jax.jit
  def reference(kernel, dy):
    want, vjp = jax.vjp(conv, kernel)
    return want, vjp(dy)[0].reshape(-1, o)

  want, dk_want = (np.asarray(a) for a in reference(kernel, dy))
  got = jax.jit(cpu_gemm.conv, static_argnums=(2, 3, 4))(
      x, kernel.reshape(-1, o), kernel_size, strides, padding)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=1e-5 * np.abs(want).max())
  dk = jax.jit(cpu_gemm.conv_kernel_grad, static_argnums=(2, 3, 4))(
      x, dy, kernel_size, strides, padding)
  np.testing.assert_allclose(dk, dk_want, rtol=0,
                             atol=1e-5 * np.abs(dk_want).max())


def test_conv_shape_errors_name_the_shapes():
  x = jnp.ones((2, 8, 8, 4))
  bad_kernel = jnp.ones((9 * 5, 6))  # built for 5 input features, not 4
  out = jax.ShapeDtypeStruct((2, 8, 8, 6), jnp.float32)
  call = jax.ffi.ffi_call(cpu_gemm.CONV_TARGET, out)
  attrs = cpu_gemm._conv_attrs((3, 3), (1, 1), ((1, 1), (1, 1)))
  with pytest.raises(Exception, match=r'kernel \[45, 6\].*\[2, 8, 8, 4\]'):
    jax.jit(lambda x, k: call(x, k, **attrs))(x, bad_kernel).block_until_ready()


def _model_cases():
  """One block / one Mixer block each: the kernel's products are the dense
  layers', which a second block would repeat. 'vit': class token and plain
  head; 'representation': the MAP head (one-query attention) and the
  pre-logits layer; 'hybrid': a ResNet stem in front; 'mixer'."""
  vit_kw = dict(num_classes=10, patch_size=(8, 8), hidden_size=48,
                num_layers=1, num_heads=3, mlp_dim=96, classifier='token')
  return {
      'vit': (vit.VisionTransformer(**vit_kw), 32),
      'hybrid': (vit.VisionTransformer(
          **{**vit_kw, 'patch_size': (1, 1), 'resnet_layers': ()}), 32),
      'representation': (vit.VisionTransformer(
          **{**vit_kw, 'representation_size': 16, 'classifier': 'map'}), 32),
      'mixer': (mixer.MlpMixer(num_classes=10, patch_size=(8, 8),
                               num_blocks=1,
                               hidden_dim=32, tokens_mlp_dim=24,
                               channels_mlp_dim=64), 32),
  }


def _with_kernel(model):
  return model.clone(dot_general=cpu_gemm.dot_general)


@pytest.mark.parametrize('name', list(_model_cases()))
def test_models_same_function_and_gradients_with_the_kernel(name):
  """Logits, loss and parameter gradients with the kernel's `dot_general`
  against the stock model; the kernel is called exactly when hooked."""
  model, size = _model_cases()[name]
  x = golden_inputs.random_images(0, 3, size)
  params = jax.tree.map(jnp.asarray, random_model_params(
      model, size, seed=1, train=False))
  labels = jnp.arange(3) % 10

  def loss(m):
    def f(params):
      logits = m.apply({'params': params}, x, train=False)
      return (-jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels]),
              logits)
    return jax.value_and_grad(f, has_aux=True)

  results = {}
  for on, m in ((True, _with_kernel(model)), (False, model)):
    traced = jax.jit(loss(m)).trace(params)
    assert (cpu_gemm.TARGET in str(traced.jaxpr)) == on
    results[on] = traced.lower().compile()(params)
  (l1, logits1), g1 = results[True]
  (l0, logits0), g0 = results[False]
  assert np.abs(logits0).max() > 0.1
  np.testing.assert_allclose(logits1, logits0, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5)


def test_flops_count_the_kernel_products_too():
  model, size = _model_cases()['hybrid']
  counts = [flops.forward_flops(m, (size, size), train=False)
            for m in (_with_kernel(model), model)]
  assert counts[0] == counts[1] > 0


def test_builds_from_scratch_into_an_empty_cache(tmp_path):
  lib = cpu_gemm.build(cache_dir=str(tmp_path))
  assert os.path.dirname(lib) == str(tmp_path) and os.path.getsize(lib) > 0
  assert cpu_gemm.build(cache_dir=str(tmp_path)) == lib  # cached: no rebuild
  assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(lib)]


def test_a_failed_build_says_why(tmp_path, monkeypatch):
  monkeypatch.setenv('CXX', '/bin/false')
  with pytest.raises(RuntimeError, match='failed'):
    cpu_gemm.build(cache_dir=str(tmp_path))
  assert not list(tmp_path.iterdir())  # no half-written library left
