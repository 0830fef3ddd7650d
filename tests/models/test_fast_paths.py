"""The exact shortcuts against what they replace (the patch embedding as a
matmul vs flax's convolution, head-major attention vs
`jax.nn.dot_product_attention`), and every computation hook of `vit_jax.perf.hooks` against the stock path:
same logits and gradients, piece by piece and in whole models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models import vit
from vit_jax.perf import hooks

# Every non-stock choice of every piece (a deleted choice drops out here).
PIECES = [(k, v) for k, vals in hooks.CHOICES.items()
          if k != 'host_malloc'
          for v in vals if v not in ('auto', hooks.STOCK[k], 'cudnn')]


@pytest.mark.parametrize('mode', ['im2col', 'implicit_gemm'])
@pytest.mark.parametrize('patch,size,channels', [
    ((16, 16), (64, 48), 3),
    ((16, 16), (70, 37), 3),   # rows/columns that do not fill a patch
    ((4, 2), (12, 10), 5),     # non-square patches
    ((1, 1), (7, 7), 8),       # the hybrids' 1x1 projection
])
def test_patch_embed_equals_valid_conv(patch, size, channels, mode):
  """The conv hook's patch embedding (reshapes and one matmul) against
  flax's own convolution."""
  x = jax.random.normal(jax.random.key(0), (2, *size, channels))
  conv = nn.Conv(24, patch, strides=patch, padding='VALID')
  ours = conv.clone(conv_general_dilated=hooks.model_overrides(
      {'conv': mode}, 'cpu', 1)['conv_general_dilated'])
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
  m = nn.Conv(8, (16, 16), strides=(16, 16), padding='VALID',
              dtype=jnp.bfloat16, conv_general_dilated=hooks.model_overrides(
                  {'conv': 'implicit_gemm'}, 'cpu', 1)['conv_general_dilated'])
  params = m.init(jax.random.key(1), x)
  assert params['params']['kernel'].dtype == jnp.float32
  assert m.apply(params, x).dtype == jnp.bfloat16


def _qkv(nq, nk, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  return (jax.random.normal(keys[0], (2, nq, 3, 16)).astype(dtype),
          jax.random.normal(keys[1], (2, nk, 3, 16)).astype(dtype),
          jax.random.normal(keys[2], (2, nk, 3, 16)).astype(dtype))


@pytest.mark.parametrize('nq,nk', [(197, 197), (1, 50)])
def test_head_major_attention_equals_jax(nq, nk):
  q, k, v = _qkv(nq, nk)
  y, w = vit._head_major_attention(q, k, v, lambda w: w)  # pylint: disable=protected-access
  ref = jax.nn.dot_product_attention(q, k, v, implementation='xla')
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(vit.dot_product_attention(q, k, v), ref,
                             rtol=1e-5, atol=1e-5)
  assert w.shape == (2, 3, nq, nk) and w.dtype == jnp.float32
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


def _attention_fns():
  fns = {}
  for key, value in PIECES:
    if key == 'attention':
      for gemm in ('off', 'on'):
        kw = hooks.model_overrides({'attention': value, 'cpu_gemm': gemm},
                                   'cpu', 1)
        fns[f'{value}-cpu_gemm_{gemm}'] = kw['attention_fn']
  return fns


ATTENTION_FNS = _attention_fns()


@pytest.mark.parametrize('name', sorted(ATTENTION_FNS))
@pytest.mark.parametrize('nq,nk', [(197, 197), (1, 50)])
def test_attention_hooks_equal_the_default(name, nq, nk):
  """Values and gradients (w.r.t. q, k, v) against autodiff of the model's
  `dot_product_attention`; float32 and bfloat16."""
  ours, ref = ATTENTION_FNS[name], vit.dot_product_attention
  g = jax.random.normal(jax.random.key(3), (2, nq, 3, 16))
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
    args = _qkv(nq, nk, dtype)
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


CONV_MODES = [v for k, v in PIECES if k == 'conv']


@pytest.mark.parametrize('mode', CONV_MODES)
@pytest.mark.parametrize('kernel,strides,size,padding', [
    ((1, 1), (1, 1), (8, 8), 'SAME'), ((1, 1), (2, 2), (7, 9), 'SAME'),
    ((3, 3), (1, 1), (8, 8), 'SAME'), ((3, 3), (2, 2), (7, 9), 'SAME'),
    ((7, 7), (2, 2), (15, 13), 'SAME'), ((3, 3), (2, 2), (8, 8), 'SAME'),
    ((3, 3), (1, 1), (9, 8), 'VALID'), ((2, 2), (1, 1), (9, 8), 'SAME'),
    ((2, 3), (1, 1), (9, 8), 'VALID'), ((3, 3), (2, 2), (9, 8), 'VALID'),
    ((3, 3), (1, 1), (8, 8), ((2, 0), (1, 1)))])
def test_conv_hooks_equal_lax(mode, kernel, strides, size, padding):
  """`conv_general_dilated` hooks against lax's convolution and its
  autodiff: values, input and kernel gradients ('SAME' with odd sizes and
  even kernels, 'VALID', explicit padding)."""
  conv = hooks.model_overrides({'conv': mode}, 'cpu', 1)[
      'conv_general_dilated']
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, *size, 5))
  w = jax.random.normal(kk, (*kernel, 5, 7))
  dn = ('NHWC', 'HWIO', 'NHWC')
  ref = lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=dn, precision='highest')
  ours = lambda x, w: conv(x, w, strides, padding, dimension_numbers=dn)
  y, vjp = jax.vjp(ours, x, w)
  y_ref, vjp_ref = jax.vjp(ref, x, w)
  np.testing.assert_allclose(y, y_ref, rtol=0,
                             atol=1e-5 * float(jnp.abs(y_ref).max()))
  g = jax.random.normal(kg, y_ref.shape)
  for got, want in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize('mode', CONV_MODES)
def test_conv_hooks_pass_other_convolutions_to_lax(mode):
  """Grouped or dilated convolutions are lax's own (same result)."""
  conv = hooks.model_overrides({'conv': mode}, 'cpu', 1)[
      'conv_general_dilated']
  x = jax.random.normal(jax.random.key(0), (1, 9, 9, 4))
  for w, kw in ((jax.random.normal(jax.random.key(1), (3, 3, 2, 4)),
                 dict(feature_group_count=2)),
                (jax.random.normal(jax.random.key(1), (3, 3, 4, 4)),
                 dict(rhs_dilation=(2, 2)))):
    args = (x, w, (1, 1), 'SAME')
    kw = dict(kw, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    np.testing.assert_array_equal(
        conv(*args, **kw), jax.lax.conv_general_dilated(*args, **kw))


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
  x = (jax.random.normal(jax.random.key(0), shape) * 3 + 1).astype(dtype)
  ours, ref = cls(dtype=dtype), nn.GroupNorm(dtype=dtype)
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
  with jax.enable_x64():
    w = jax.random.normal(jax.random.key(0), shape, jnp.float64) * 0.3 + 0.1
    g = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, w), jax.vjp(ref, w)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], rtol=0, atol=1e-12)
    assert float(jnp.abs(vjp(g)[0]).max()) > 1e-3


# Small members of each family: (name, image size, constructor overrides).
MODELS = [('mu/16', 32, {}),
          ('R26+S/32', 64, dict(num_layers=1, resnet_layers=(1, 1))),
          ('Mixer-mu_16', 32, {})]


def _randomized(model, size):
  x = jnp.zeros((1, size, size, 3))
  params = jax.jit(model.init)(jax.random.key(0), x)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [
      l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


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
  params = _randomized(stock, size)
  x = jax.random.uniform(jax.random.key(2), (2, size, size, 3), minval=-1)
  loss = lambda m: jax.jit(jax.value_and_grad(
      lambda p: jnp.sum(jnp.sin(m.apply(p, x)))))
  ref_logits = jax.jit(stock.apply)(params, x)
  logits = jax.jit(model.apply)(params, x)
  np.testing.assert_allclose(logits, ref_logits, rtol=0,
                             atol=1e-5 * float(jnp.abs(ref_logits).max()))
  (value, grads), (ref_value, ref_grads) = loss(model)(params), loss(stock)(
      params)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  gscale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_grads))
  for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                              jax.tree.leaves(ref_grads)):
    # relative to the leaf, and to the model's largest gradient (a key
    # bias's gradient is 0 up to rounding: softmax ignores it)
    atol = 1e-4 * float(jnp.abs(g_ref).max()) + 1e-6 * gscale
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
