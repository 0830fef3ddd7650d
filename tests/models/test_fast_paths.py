"""The exact shortcuts against what they replace (the patch embedding as a
matmul vs flax's convolution, head-major attention vs
`jax.nn.dot_product_attention`), and every computation hook of
`vit_jax.perf.hooks` against the stock path: same logits and gradients,
piece by piece and in whole models."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden_inputs
from tests.tiny_configs import random_model_params
from vit_jax import models
from vit_jax.checkpoints import npz
from vit_jax.models import vit
from vit_jax.perf import hooks

# Every non-stock choice of every piece (a deleted choice drops out here).
PIECES = [(k, v) for k, vals in hooks.CHOICES.items()
          if k != 'host_malloc'
          for v in vals if v not in ('auto', hooks.STOCK[k], 'cudnn')]


def _normal(shape, seed=0, dtype=np.float32):
  """Standard normal numpy data (no jax program to compile per shape)."""
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _noise_like(shapes, seed, scale=0.1, one_scales=False):
  """`scale` x standard normal arrays of init's shapes; `one_scales`: 1 +
  that for the 'scale' leaves (norms away from the identity)."""
  rng = np.random.default_rng(seed)
  flat = npz.flatten(shapes)
  return {'params': npz.unflatten({
      k: (float(one_scales and k.endswith('scale'))
          + scale * rng.standard_normal(v.shape)).astype(np.float32)
      for k, v in flat.items()})}


@pytest.mark.parametrize('patch,size,channels', [
    ((16, 16), (64, 48), 3),
    ((16, 16), (70, 37), 3),   # rows/columns that do not fill a patch
    ((4, 2), (12, 10), 5),     # non-square patches
    ((1, 1), (7, 7), 8),       # the hybrids' 1x1 projection
])
def test_patch_embed_equals_valid_conv(patch, size, channels):
  """The conv hook's patch embedding ('im2col', 'implicit_gemm': reshapes
  and one matmul) against flax's own convolution; same parameter shapes."""
  x = _normal((2, *size, channels))
  conv = nn.Conv(24, patch, strides=patch, padding='VALID')
  shapes = jax.eval_shape(conv.init, jax.random.key(0), x)
  params = _noise_like(shapes, seed=2)  # a non-zero bias
  want = jax.jit(conv.apply)(params, x)
  for mode in ('im2col', 'implicit_gemm'):
    ours = conv.clone(conv_general_dilated=hooks.model_overrides(
        {'conv': mode}, 'cpu', 1)['conv_general_dilated'])
    ours_shapes = jax.eval_shape(ours.init, jax.random.key(0), x)
    assert (jax.tree.map(jnp.shape, ours_shapes)
            == jax.tree.map(jnp.shape, shapes))  # checkpoints load
    np.testing.assert_allclose(jax.jit(ours.apply)(params, x), want,
                               rtol=1e-5, atol=1e-5, err_msg=mode)


def test_patch_embed_bfloat16_compute():
  """float32 parameters, bfloat16 output (the traced program's dtypes)."""
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  m = nn.Conv(8, (16, 16), strides=(16, 16), padding='VALID',
              dtype=jnp.bfloat16, conv_general_dilated=hooks.model_overrides(
                  {'conv': 'implicit_gemm'}, 'cpu', 1)['conv_general_dilated'])
  params = jax.eval_shape(m.init, jax.random.key(0), x)
  assert params['params']['kernel'].dtype == jnp.float32
  assert jax.eval_shape(m.apply, params, x).dtype == jnp.bfloat16


def _qkv(nq, nk, dtype=np.float32):
  return (_normal((2, nq, 3, 16), 0, dtype), _normal((2, nk, 3, 16), 1, dtype),
          _normal((2, nk, 3, 16), 2, dtype))


@pytest.mark.parametrize('nq,nk', [(197, 197), (1, 50)])
def test_head_major_attention_equals_jax(nq, nk):
  """Head-major attention and the model's `dot_product_attention` against
  `jax.nn.dot_product_attention`; weights are a softmax over the keys."""
  @jax.jit
  def run(q, k, v):
    y, w = vit._head_major_attention(q, k, v, lambda w: w)  # pylint: disable=protected-access
    return (y, w, vit.dot_product_attention(q, k, v),
            jax.nn.dot_product_attention(q, k, v, implementation='xla'))
  y, w, y_model, ref = run(*_qkv(nq, nk))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y_model, ref, rtol=1e-5, atol=1e-5)
  assert w.shape == (2, 3, nq, nk) and w.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-5)


def _attention_fns():
  """name -> hook; a hook that `cpu_gemm` does not change ('xla') once."""
  fns = {}
  for key, value in PIECES:
    if key == 'attention':
      for gemm in ('off', 'on'):
        kw = hooks.model_overrides({'attention': value, 'cpu_gemm': gemm},
                                   'cpu', 1)
        if kw['attention_fn'] not in fns.values():
          fns[f'{value}-cpu_gemm_{gemm}'] = kw['attention_fn']
  return fns


ATTENTION_FNS = _attention_fns()
ATTENTION_DTYPES = ((np.float32, 1e-5), (jnp.bfloat16, 2e-2))  # with tol


def _attention_outputs(fn, nq, nk):
  """[(output, gradients w.r.t. q, k, v)] of `fn` per ATTENTION_DTYPES
  (one compiled program)."""
  g = _normal((2, nq, 3, 16), 3)
  loss = lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * g)

  @jax.jit
  def run(args):
    return [(fn(*qkv), jax.grad(loss, argnums=(0, 1, 2))(*qkv))
            for qkv in args]
  return jax.device_get(run([_qkv(nq, nk, dtype)
                             for dtype, _ in ATTENTION_DTYPES]))


@functools.cache
def _attention_reference(nq, nk):
  return _attention_outputs(vit.dot_product_attention, nq, nk)


@pytest.mark.parametrize('name', sorted(ATTENTION_FNS))
@pytest.mark.parametrize('nq,nk', [(197, 197), (1, 50)])
def test_attention_hooks_equal_the_default(name, nq, nk):
  """Values and gradients (w.r.t. q, k, v) against autodiff of the model's
  `dot_product_attention`; float32 and bfloat16."""
  got_all = _attention_outputs(ATTENTION_FNS[name], nq, nk)
  for (dtype, tol), (y, grads), (y_ref, grads_ref) in zip(
      ATTENTION_DTYPES, got_all, _attention_reference(nq, nk)):
    np.testing.assert_allclose(y.astype(np.float32),
                               y_ref.astype(np.float32), rtol=0, atol=tol)
    for got, want in zip(grads, grads_ref):
      assert got.dtype == want.dtype == dtype
      want = want.astype(np.float32)
      np.testing.assert_allclose(got.astype(np.float32), want, rtol=0,
                                 atol=tol * np.abs(want).max())


CONV_MODES = [v for k, v in PIECES if k == 'conv']


@pytest.mark.parametrize('kernel,strides,size,padding', [
    ((1, 1), (1, 1), (8, 8), 'SAME'), ((1, 1), (2, 2), (7, 9), 'SAME'),
    ((3, 3), (1, 1), (8, 8), 'SAME'), ((3, 3), (2, 2), (7, 9), 'SAME'),
    ((7, 7), (2, 2), (15, 13), 'SAME'), ((3, 3), (2, 2), (8, 8), 'SAME'),
    ((3, 3), (1, 1), (9, 8), 'VALID'), ((2, 2), (1, 1), (9, 8), 'SAME'),
    ((2, 3), (1, 1), (9, 8), 'VALID'), ((3, 3), (2, 2), (9, 8), 'VALID'),
    ((3, 3), (1, 1), (8, 8), ((2, 0), (1, 1)))])
def test_conv_hooks_equal_lax(kernel, strides, size, padding):
  """Every `conv_general_dilated` hook against lax's convolution and its
  autodiff: values, input and kernel gradients ('SAME' with odd sizes and
  even kernels, 'VALID', explicit padding)."""
  x, w = _normal((2, *size, 5), 0), _normal((*kernel, 5, 7), 1)
  dn = ('NHWC', 'HWIO', 'NHWC')

  def value_and_grads(conv, **kw):
    @jax.jit
    def run(x, w, g):
      y, vjp = jax.vjp(lambda x, w: conv(
          x, w, strides, padding, dimension_numbers=dn, **kw), x, w)
      return y, vjp(g)
    return run

  y_shape = jax.eval_shape(lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=dn), x, w).shape
  g = _normal(y_shape, 2)
  y_ref, grads_ref = value_and_grads(jax.lax.conv_general_dilated,
                                     precision='highest')(x, w, g)
  for mode in CONV_MODES:
    conv = hooks.model_overrides({'conv': mode}, 'cpu', 1)[
        'conv_general_dilated']
    y, grads = value_and_grads(conv)(x, w, g)
    for got, want in zip((y, *grads), (y_ref, *grads_ref)):
      want = np.asarray(want)
      np.testing.assert_allclose(got, want, rtol=0,
                                 atol=1e-5 * np.abs(want).max(), err_msg=mode)


@pytest.mark.parametrize('mode', CONV_MODES)
def test_conv_hooks_pass_other_convolutions_to_lax(mode):
  """Grouped or dilated convolutions are lax's own (same result)."""
  conv = hooks.model_overrides({'conv': mode}, 'cpu', 1)[
      'conv_general_dilated']
  x = _normal((1, 9, 9, 4), 0)
  for w, kw in ((_normal((3, 3, 2, 4), 1), dict(feature_group_count=2)),
                (_normal((3, 3, 4, 4), 1), dict(rhs_dilation=(2, 2)))):
    kw = dict(kw, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    ours, ref = (jax.jit(lambda x, w, f=f, kw=kw: f(x, w, (1, 1), 'SAME',
                                                    **kw))(x, w)
                 for f in (conv, jax.lax.conv_general_dilated))
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.skipif(('group_norm', 'two_stage') not in PIECES,
                    reason='no group_norm piece')
@pytest.mark.parametrize('shape,dtype', [
    ((2, 8, 8, 64), jnp.float32), ((3, 5, 7, 32), jnp.float32),
    ((2, 4, 4, 256), jnp.float32), ((2, 6, 6, 64), jnp.bfloat16)])
def test_group_norm_hook_equals_flax(shape, dtype):
  """The two-stage GroupNorm: flax's parameters, outputs, gradients (w.r.t.
  input, scale and bias) and output dtype."""
  cls = hooks.model_overrides({'group_norm': 'two_stage'}, 'cpu', 1)[
      'group_norm_cls']
  x = (_normal(shape) * 3 + 1).astype(dtype)
  ours, ref = cls(dtype=dtype), nn.GroupNorm(dtype=dtype)
  shapes = jax.eval_shape(ours.init, jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(
      jnp.shape, jax.eval_shape(ref.init, jax.random.key(0), x))
  # not the identity initialization
  params = _noise_like(shapes, seed=2, scale=1.0, one_scales=True)
  with_grads = dtype == jnp.float32

  def run(m):
    loss = lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
    return jax.jit(lambda p, x: (
        m.apply(p, x),
        jax.grad(loss, argnums=(0, 1))(p, x) if with_grads else ()))

  (y, grads), (y_ref, grads_ref) = jax.device_get(
      (run(ours)(params, x), run(ref)(params, x)))
  assert y.dtype == y_ref.dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  y, y_ref = y.astype(np.float32), y_ref.astype(np.float32)
  np.testing.assert_allclose(y, y_ref, rtol=0, atol=tol * np.abs(y_ref).max())
  for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(g, g_ref, rtol=0,
                               atol=1e-5 * np.abs(g_ref).max())


@pytest.mark.skipif(('weight_std', 'custom_grad') not in PIECES,
                    reason='no weight_std piece')
@pytest.mark.parametrize('shape', [(3, 3, 16, 8), (1, 1, 64, 32),
                                   (7, 7, 3, 16)])
def test_weight_std_hook_gradient_is_the_autodiff_one(shape):
  """The hand-written weight-standardization backward equals autodiff of
  the model's (w - mean) / (std + eps) (float64)."""
  from vit_jax.models import resnet  # pylint: disable=g-import-not-at-top
  fn = hooks.model_overrides({'weight_std': 'custom_grad'}, 'cpu', 1)[
      'weight_standardize']
  ours = lambda w: fn(w, axis=[0, 1, 2], eps=1e-5)
  ref = lambda w: resnet.weight_standardize(w, axis=[0, 1, 2], eps=1e-5)

  def value_and_vjp(f, w, g):
    y, vjp = jax.vjp(f, w)
    return y, vjp(g)[0]

  with jax.enable_x64():
    w = _normal(shape, 0, np.float64) * 0.3 + 0.1
    g = _normal(shape, 1, np.float64)
    (y, dw), (y_ref, dw_ref) = jax.jit(lambda w, g: (
        value_and_vjp(ours, w, g), value_and_vjp(ref, w, g)))(w, g)
    assert y.dtype == dw.dtype == jnp.float64
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=0, atol=1e-12)
    assert float(np.abs(dw).max()) > 1e-3


# Small members of each family, one block each (a second repeats the
# first's pieces): (name, image size, constructor overrides).
MODELS = [('mu/16', 32, dict(num_layers=1)),
          ('R26+S/32', 64, dict(num_layers=1, resnet_layers=(1, 1))),
          ('Mixer-mu_16', 32, dict(num_blocks=1))]


def _every_piece(name):
  """One non-stock choice of every piece that applies to `name`."""
  perf = {}
  for key, value in PIECES:
    if key not in perf and hooks.model_overrides({key: value}, 'cpu', 1,
                                                 name):
      perf[key] = value
  return perf


@pytest.mark.parametrize('name,size,kw', MODELS, ids=[m[0] for m in MODELS])
def test_models_exact_with_every_piece(name, size, kw, fast_compile):
  """Every piece that applies to the model on at once (each is checked
  alone above) against the stock model: logits and parameter gradients."""
  del fast_compile
  perf = _every_piece(name)
  if not perf:
    pytest.skip(f'no piece applies to {name}')
  stock = models.get_model(name, num_classes=10, **kw)
  model = stock.clone(**hooks.model_overrides(perf, 'cpu', 1, name))
  params = {'params': random_model_params(stock, size, seed=1)}
  x = golden_inputs.random_images(2, 2, size)

  def run(m):  # (loss, logits), gradients: one program per model
    def loss(p):
      logits = m.apply(p, x)
      return jnp.sum(jnp.sin(logits)), logits
    return jax.device_get(jax.jit(jax.value_and_grad(loss, has_aux=True))(
        params))

  (value, logits), grads = run(model)
  (ref_value, ref_logits), ref_grads = run(stock)
  np.testing.assert_allclose(logits, ref_logits, rtol=0,
                             atol=1e-5 * np.abs(ref_logits).max())
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  gscale = max(np.abs(g).max() for g in jax.tree.leaves(ref_grads))
  for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                              jax.tree.leaves(ref_grads)):
    # relative to the leaf, and to the model's largest gradient (a key
    # bias's gradient is 0 up to rounding: softmax ignores it)
    atol = 1e-4 * np.abs(g_ref).max() + 1e-6 * gscale
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=atol,
                               err_msg=f'{perf} {jax.tree_util.keystr(path)}')


def test_stock_models_are_equal_and_hooks_change_equality():
  """Equal settings give equal (hashable, jit-cache-sharing) models."""
  a = models.get_model('mu/16', **hooks.model_overrides(
      {'attention': 'cudnn'}, 'gpu', 1, 'mu/16'))
  b = models.get_model('mu/16', **hooks.model_overrides(
      {'attention': 'cudnn'}, 'gpu', 1, 'mu/16'))
  assert a == b and hash(a) == hash(b)
  assert a != models.get_model('mu/16')
