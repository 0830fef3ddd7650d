"""ViT / hybrid / Mixer / ResNet behaviour: intermediates, options, dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import tiny_configs
from vit_jax import models
from vit_jax.models import intermediates

pytestmark = pytest.mark.usefixtures('fast_compile')


def setup(name, size=32, **kw):
  model = models.get_model(name, num_classes=10, **kw)
  x = jax.random.uniform(jax.random.key(1), (2, size, size, 3), minval=-1,
                         maxval=1)
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  rng = np.random.RandomState(0)  # non-zero head, non-trivial norms
  params = jax.tree_util.tree_map(
      lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(p.dtype),
      params)
  return model, params, x


def test_intermediates_shapes_and_consistency():
  model, params, x = setup('mu/16', size=64)  # 4x4 grid + class token
  logits, inter = intermediates.apply(model, params, x)
  np.testing.assert_allclose(logits, model.apply({'params': params}, x),
                             atol=1e-5)  # fused-attention path agrees
  assert len(inter['attention']) == len(inter['tokens']) == 2
  assert inter['attention'][0].shape == (2, 2, 17, 17)
  np.testing.assert_allclose(inter['attention'][1].sum(-1), 1, rtol=1e-5)
  assert inter['tokens'][1].shape == (2, 17, 32)
  assert inter['mlp_hidden'][0].shape == (2, 17, 128)
  # pre_logits = class token of the final LayerNorm of the last block's tokens
  ln = params['Transformer']['encoder_norm']
  t = inter['tokens'][-1][:, 0]
  mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
  expected = (t - mu) / jnp.sqrt(var + 1e-6) * ln['scale'] + ln['bias']
  np.testing.assert_allclose(inter['pre_logits'], expected, atol=1e-5)


def test_mlp_hidden_is_the_gelu_between_the_two_dense_layers():
  model, params, x = setup('mu/16')
  _, inter = intermediates.apply(model, params, x)
  mlp = params['Transformer']['encoderblock_1']['MlpBlock_3']
  ln = params['Transformer']['encoderblock_1']['LayerNorm_2']
  h = inter['mlp_hidden'][1]
  # tokens[1] = x_mid + Dense_1(h)  =>  recover x_mid, recompute h from it
  x_mid = inter['tokens'][1] - (h @ mlp['Dense_1']['kernel'] +
                                mlp['Dense_1']['bias'])
  mu, var = x_mid.mean(-1, keepdims=True), x_mid.var(-1, keepdims=True)
  y = (x_mid - mu) / jnp.sqrt(var + 1e-6) * ln['scale'] + ln['bias']
  # the default activation is flax's tanh-form GELU, as in the official code
  expected = nn.gelu(y @ mlp['Dense_0']['kernel'] + mlp['Dense_0']['bias'])
  np.testing.assert_allclose(h, expected, atol=2e-4)


def test_cls_insertion():
  model, params, x = setup('mu/16', num_layers=3)
  base = model.apply({'params': params}, x)
  np.testing.assert_array_equal(
      base, model.apply({'params': params}, x, cls_insert_layer=0))
  late, inter = intermediates.apply(model, params, x, cls_insert_layer=2)
  assert not np.allclose(base, late)
  # blocks before the insertion: the 4 patch tokens' pass (the class token
  # runs through them alone); block 2 sees all 5 tokens
  assert inter['attention'][0].shape[-1] == 4
  assert inter['attention'][2].shape[-1] == 5
  with pytest.raises(ValueError, match=r'cls_insert_layer=4 .*\[0, 3\]'):
    model.apply({'params': params}, x, cls_insert_layer=4)
  # known answers against a numpy reference: tests/models/
  # test_cls_late_insertion.py


@pytest.mark.parametrize('insert,mode', [
    (0, 'alone'), (2, 'alone'), (3, 'alone'), (3, 'raw')])
def test_last_block_computes_the_class_token_alone_same_function(insert,
                                                                 mode):
  model, params, x = setup('mu/16', num_layers=3)
  kw = dict(cls_insert_layer=insert, cls_insert_mode=mode)
  full = lambda p: intermediates.apply(model, p, x, **kw)[0]
  fast = lambda p: model.apply({'params': p}, x, **kw)
  np.testing.assert_allclose(jax.jit(fast)(params), jax.jit(full)(params),
                             rtol=1e-5, atol=1e-6)
  loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
      jax.jit(jax.grad(loss(fast)))(params),
      jax.jit(jax.grad(loss(full)))(params))
  fast_jaxpr = str(jax.make_jaxpr(fast)(params))
  full_jaxpr = str(jax.make_jaxpr(full)(params))
  if insert == 3:  # k = L: nothing reads the patch tokens; not computed
    assert 'f32[2,4,128]' in full_jaxpr
    assert 'f32[2,4,128]' not in fast_jaxpr
  elif insert == 0 or mode == 'raw':  # ... and does less: the last block's
    assert 'f32[2,1,128]' in fast_jaxpr  # MLP sees one row
    assert 'f32[2,1,128]' not in full_jaxpr
  else:  # the class token's solo passes are one row anyway; only the last
    assert 'f32[2,5,128]' in full_jaxpr  # block sees all 5 tokens
    assert 'f32[2,5,128]' not in fast_jaxpr


def test_dropout_only_in_training():
  model, params, x = setup('mu/16', dropout_rate=0.1,
                           attention_dropout_rate=0.1)
  a = model.apply({'params': params}, x)
  np.testing.assert_array_equal(a, model.apply({'params': params}, x))
  b = model.apply({'params': params}, x, train=True,
                  rngs={'dropout': jax.random.key(3)})
  assert not np.allclose(a, b)


def test_remat_same_values_and_gradients():
  model, params, x = setup('mu/16')
  remat = models.get_model('mu/16', num_classes=10, remat=True)

  def loss(m):
    return lambda p: jnp.sum(m.apply({'params': p}, x) ** 2)
  np.testing.assert_allclose(jax.jit(loss(model))(params),
                             jax.jit(loss(remat))(params), rtol=1e-5)
  g1 = jax.jit(jax.grad(loss(model)))(params)
  g2 = jax.jit(jax.grad(loss(remat)))(params)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
      g1, g2)


@pytest.mark.parametrize('name', ['mu/16', 'Mixer-mu_16', 'BiT-R8'])
def test_bfloat16_compute_with_float32_params(name):
  model, params, x = setup(name)
  # a non-zero head so that logits are not all equal to the bias
  params = jax.tree_util.tree_map(lambda p: p + 0.05, params)
  bf = models.get_model(name, num_classes=10, dtype=jnp.bfloat16)
  y32 = jax.jit(model.apply)({'params': params}, x)
  y16 = jax.jit(bf.apply)({'params': params}, x)
  assert y16.dtype == jnp.bfloat16
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32
  np.testing.assert_allclose(np.float32(y16), y32, atol=0.1 * np.abs(
      y32).max() + 1e-2)


@pytest.mark.parametrize('name,size,grid', [
    ('mu/16', 64, (4, 4)), ('R_Ti/16', 64, (2, 2)), ('R26+S/32', 64, (2, 2)),
    ('ViTC-mu_16', 64, (4, 4)), ('Mixer-mu_16', 64, (4, 4))])
def test_token_grid(name, size, grid):
  kw = tiny_configs.TRANSFORMER if name.startswith(('R', 'ViTC')) else {}
  model = models.get_model(name, num_classes=0, **kw)
  assert tuple(model.patch_grid((size, size))) == grid
  x = jnp.zeros((1, size, size, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  if hasattr(model, 'classifier'):
    unpooled = models.get_model(name, num_classes=0,
                                classifier='token_unpooled', **kw)
    y = jax.eval_shape(unpooled.apply, variables, x)
    assert y.shape[1] == grid[0] * grid[1] + 1  # patches + class token


def test_features_without_head_and_pooling_options():
  for classifier, n in [('token', 32), ('gap', 32), ('map', 32)]:
    model, params, x = setup('mu/16', classifier=classifier)
    feats = models.get_model('mu/16', num_classes=0, classifier=classifier)
    y = feats.apply({'params': {k: v for k, v in params.items()
                                if k != 'head'}}, x)
    assert y.shape == (2, n)
  with pytest.raises(ValueError, match='allowed: token, gap, map'):
    setup('mu/16', classifier='avg')


def test_representation_layer_is_tanh():
  model, params, x = setup('mu/16', representation_size=16)
  _, inter = intermediates.apply(model, params, x)
  assert inter['pre_logits'].shape == (2, 16)
  assert float(jnp.abs(inter['pre_logits']).max()) <= 1.0
