"""Tests of feature visualization: activations, TV, optimization, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.analysis import feature_vis as fv
from vit_jax.analysis import modelinfo
from vit_jax.analysis import validate
from vit_jax.checkpoints import npz
from vit_jax.models import intermediates


@pytest.fixture(scope='module')
def mu():
  model = models.get_model('mu/16', num_classes=5, num_layers=3)
  params = jax.jit(model.init)(jax.random.key(0),
                               jnp.zeros((1, 32, 32, 3)))['params']
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1)
  return model, params, x


def test_truncated_activations_equal_full_model(mu):
  model, params, x = mu
  _, inter = intermediates.apply(model, params, x)
  a = fv.activations(model, params, x, 'mlp', 1)
  np.testing.assert_allclose(a, inter['mlp_hidden'][1][:, 1:], rtol=1e-5,
                             atol=1e-6)
  b = fv.activations(model, params, x, 'block', 2)
  np.testing.assert_allclose(b, inter['tokens'][2][:, 1:], rtol=1e-5,
                             atol=1e-6)


def test_query_key_value_from_block_input(mu):
  model, params, x = mu
  _, inter = intermediates.apply(model, params, x)
  tokens = np.asarray(inter['tokens'][0], np.float64)  # input of block 1
  blk = jax.tree.map(np.asarray, params['Transformer']['encoderblock_1'])
  ln = blk['LayerNorm_0']
  mu_, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
  y = (tokens - mu_) / np.sqrt(var + 1e-6) * ln['scale'] + ln['bias']
  for kind in ('query', 'key', 'value'):
    p = blk['MultiHeadDotProductAttention_1'][kind]
    ref = np.einsum('bnd,dhk->bnhk', y, p['kernel']) + p['bias']
    ref = ref.reshape(ref.shape[:2] + (-1,))[:, 1:]
    got = fv.activations(model, params, x, kind, 1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_total_variation_known_values():
  tv = jax.jit(fv.total_variation)  # one program, not one per operation
  assert float(tv(jnp.ones((1, 8, 8, 3)))[0]) == pytest.approx(0.0, abs=1e-5)
  x = np.zeros((1, 4, 4, 1), np.float32)
  x[:, :, 2:] = 1.0  # a vertical edge: 4 horizontal, 3+3 diagonal jumps
  # horizontal: sqrt(4), vertical: 0, diagonals: sqrt(3) each
  assert float(tv(jnp.asarray(x))[0]) == pytest.approx(
      2.0 + 2 * np.sqrt(3.0), rel=1e-5)


def test_visualize_increases_activation_on_tiny_model(mu):
  model, params, _ = mu
  feats = [fv.Feature('mlp', 1, 3), fv.Feature('mlp', 1, 7)]
  res = fv.visualize(model, params, feats, (32, 32),
                     fv.Recipe(steps=30, copies=2, jitter=4), log_every=0)
  assert res['images'].shape == (2, 32, 32, 3)
  assert res['images'].min() >= 0 and res['images'].max() <= 1
  assert (res['end'] > res['start']).all()


def test_bad_feature_requests_name_the_range(mu):
  model, _, _ = mu
  with pytest.raises(validate.AnalysisError, match=r'allowed 0\.\.2'):
    fv.check(model, fv.Feature('mlp', 3, 0))
  with pytest.raises(validate.AnalysisError, match=r'allowed 0\.\.127'):
    fv.check(model, fv.Feature('mlp', 0, 128))
  with pytest.raises(validate.AnalysisError, match=r'allowed 0\.\.31'):
    fv.check(model, fv.Feature('value', 0, 32))
  with pytest.raises(validate.AnalysisError, match='allowed mlp, block'):
    fv.check(model, fv.Feature('attention', 0, 0))
  mixer = models.get_model('Mixer-mu_16', num_classes=2)
  with pytest.raises(validate.AnalysisError, match='allows: block'):
    fv.check(mixer, fv.Feature('mlp', 0, 0))
  assert fv.check(model, fv.Feature('block', -1, -1)) == fv.Feature(
      'block', 2, 31)


def test_mixer_block_features():
  """The block output of a Mixer's last block, [B, patches, D] (traced by
  `jax.eval_shape` on the parameter shapes: nothing compiled)."""
  model = models.get_model('Mixer-mu_16', num_classes=2)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  last = modelinfo.num_layers(model) - 1
  a = jax.eval_shape(lambda p, x: fv.activations(model, p, x, 'block', last),
                     params, x)
  assert a.shape == (1, 4, model.hidden_dim)


def test_real_vit_ti_feature_grows_tenfold(shared_data, optimized_compile):
  # Input gradients: XLA's unoptimized convolution input gradient takes
  # ~30 s per 224 px image, the optimized one ~20 ms.
  del optimized_compile
  ckpt = shared_data / 'checkpoints' / 'ViT-Ti_16-augreg-i21k-ft-i1k-224.npz'
  model = models.get_model('Ti/16', num_classes=1000)
  params = npz.load_npz(str(ckpt))  # at its own 224 px: no init needed
  res = fv.visualize(model, params, [fv.Feature('mlp', 1, 0)], (224, 224),
                     fv.Recipe(steps=25, copies=2), log_every=0)
  start, end = float(res['start'][0]), float(res['end'][0])
  assert end >= 10 * abs(start), (start, end)
