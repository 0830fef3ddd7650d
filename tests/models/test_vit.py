"""ViT / hybrid / Mixer / ResNet behaviour: intermediates, options, dtypes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden_inputs
from tests import tiny_configs
from tests.tiny_configs import random_model_params
from vit_jax import models
from vit_jax.models import intermediates

pytestmark = pytest.mark.usefixtures('fast_compile')


@functools.cache
def setup(name, size=32, **kw):
  """(model, params, x) for 2 images at `size` px; every parameter random
  (`golden_inputs.random_params` over the shapes of an abstract init: a
  non-zero head, non-trivial norms), shared between the tests."""
  model = models.get_model(name, num_classes=10, **kw)
  x = jnp.asarray(np.random.RandomState(1).uniform(
      -1, 1, (2, size, size, 3)).astype(np.float32))
  params = random_model_params(model, size, seed=0)
  return model, jax.tree.map(jnp.asarray, params), x


@functools.cache
def mu16_intermediates():
  """mu/16 at 64 px (a 4x4 grid + class token): (model, params, x, logits
  of the plain forward pass, logits and intermediates recorded)."""
  model, params, x = setup('mu/16', size=64)
  logits = jax.jit(model.apply)({'params': params}, x)
  recorded, inter = jax.jit(functools.partial(intermediates.apply, model))(
      params, x)
  return model, params, x, logits, recorded, inter


def test_intermediates_shapes_and_consistency():
  _, params, _, logits, recorded, inter = mu16_intermediates()
  np.testing.assert_allclose(recorded, logits,
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
  _, params, _, _, _, inter = mu16_intermediates()
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
  model, params, x = setup('mu/16')  # 2 blocks
  base = jax.jit(model.apply)({'params': params}, x)
  np.testing.assert_array_equal(base, jax.jit(functools.partial(
      model.apply, cls_insert_layer=0))({'params': params}, x))
  late, inter = jax.jit(functools.partial(
      intermediates.apply, model, cls_insert_layer=1))(params, x)
  assert not np.allclose(base, late)
  # blocks before the insertion: the 4 patch tokens' pass (the class token
  # runs through them alone); block 1 sees all 5 tokens
  assert inter['attention'][0].shape[-1] == 4
  assert inter['attention'][1].shape[-1] == 5
  with pytest.raises(ValueError, match=r'cls_insert_layer=3 .*\[0, 2\]'):
    jax.eval_shape(functools.partial(model.apply, cls_insert_layer=3),
                   {'params': params}, x)
  # known answers against a numpy reference: tests/models/
  # test_cls_late_insertion.py


@functools.cache
def logits_and_grads(model, recorded=False, **kw):
  """mu/16's logits and the gradients of sum(sin(logits)) (every logit
  matters, with its sign) on setup('mu/16')'s parameters and images, by
  `model.apply` or, `recorded`, by `intermediates.apply` (every token
  through every block); one compile each, shared between the tests."""
  _, params, x = setup('mu/16')
  if recorded:
    forward = lambda p: intermediates.apply(model, p, x, **kw)[0]
  else:
    forward = lambda p: model.apply({'params': p}, x, **kw)

  def loss(p):
    y = forward(p)
    return jnp.sum(jnp.sin(y)), y
  (_, y), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return y, g


def assert_same_grads(got, want):
  """Leaf by leaf, atol 1e-6 of the leaf's largest entry (at least 1e-6):
  the two computations sum the same terms in a different order."""
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(
          a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max()))),
      got, want)


# With L = 2 blocks: k = 0; 0 < k < L (the class token alone through block
# 0, the last block sees all tokens); k = L in both modes.
@pytest.mark.parametrize('insert,mode', [
    (0, 'alone'), (1, 'alone'), (2, 'alone'), (2, 'raw')])
def test_last_block_computes_the_class_token_alone_same_function(insert,
                                                                 mode):
  """Logits and gradients of the model's own path (the last block on the
  class token alone) = those of the full computation (intermediates
  recorded: every token through every block)."""
  model, params, x = setup('mu/16')
  kw = dict(cls_insert_layer=insert, cls_insert_mode=mode)
  y_fast, g_fast = logits_and_grads(model, **kw)
  y_full, g_full = logits_and_grads(model, recorded=True, **kw)
  np.testing.assert_allclose(y_fast, y_full, rtol=1e-5, atol=1e-6)
  assert_same_grads(g_fast, g_full)
  fast_jaxpr = str(jax.make_jaxpr(
      lambda p: model.apply({'params': p}, x, **kw))(params))
  full_jaxpr = str(jax.make_jaxpr(
      lambda p: intermediates.apply(model, p, x, **kw)[0])(params))
  if insert == 2:  # k = L: nothing reads the patch tokens; not computed
    assert 'f32[2,4,128]' in full_jaxpr
    assert 'f32[2,4,128]' not in fast_jaxpr
  elif insert == 0 or mode == 'raw':  # ... and does less: the last block's
    assert 'f32[2,1,128]' in fast_jaxpr  # MLP sees one row
    assert 'f32[2,1,128]' not in full_jaxpr
  else:  # the class token's solo passes are one row anyway; only the last
    assert 'f32[2,5,128]' in full_jaxpr  # block sees all 5 tokens
    assert 'f32[2,5,128]' not in fast_jaxpr


def test_dropout_only_in_training():
  _, params, x = setup('mu/16')
  model = models.get_model('mu/16', num_classes=10, dropout_rate=0.1,
                           attention_dropout_rate=0.1)
  evaluate = jax.jit(model.apply)
  a = evaluate({'params': params}, x)  # no dropout rng needed
  np.testing.assert_array_equal(a, evaluate({'params': params}, x))
  b = jax.jit(lambda p, r: model.apply(
      {'params': p}, x, train=True, rngs={'dropout': r}))(params,
                                                          jax.random.key(3))
  assert not np.allclose(a, b)


def test_remat_same_values_and_gradients():
  model, _, _ = setup('mu/16')
  y, g = logits_and_grads(model, cls_insert_layer=0, cls_insert_mode='alone')
  y_remat, g_remat = logits_and_grads(
      models.get_model('mu/16', num_classes=10, remat=True))
  np.testing.assert_allclose(y_remat, y, rtol=1e-5, atol=1e-6)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
      g_remat, g)


@pytest.mark.parametrize('name', ['mu/16', 'Mixer-mu_16', 'BiT-R8'])
def test_bfloat16_compute_with_float32_params(name):
  model, params, x = setup(name)
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
  """num_classes=0: the head's parameters are not needed (shapes only)."""
  for classifier, n in [('token', 32), ('gap', 32), ('map', 32)]:
    _, params, x = setup('mu/16', classifier=classifier)
    feats = models.get_model('mu/16', num_classes=0, classifier=classifier)
    y = jax.eval_shape(feats.apply, {'params': {
        k: v for k, v in params.items() if k != 'head'}}, x)
    assert y.shape == (2, n)
  with pytest.raises(ValueError, match='allowed: token, gap, map'):
    setup('mu/16', classifier='avg')


def test_representation_layer_is_tanh():
  model, params, x = setup('mu/16', representation_size=16)
  _, inter = jax.jit(functools.partial(intermediates.apply, model))(params, x)
  assert inter['pre_logits'].shape == (2, 16)
  assert float(jnp.abs(inter['pre_logits']).max()) <= 1.0
