"""Tests of per-block feature maps and the locality measure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.analysis import spatial
from vit_jax.analysis import validate
from vit_jax.models import intermediates


@pytest.fixture(scope='module')
def mu():
  model = models.get_model('mu/16', num_classes=5)
  params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
  x = np.asarray(jax.random.uniform(jax.random.key(1), (2, 64, 64, 3),
                                    minval=-1))
  return model, params, x


def test_maps_are_the_mlp_units_on_the_grid(mu):
  model, params, x = mu
  m = spatial.maps(model, params, x, 'mlp', 5)
  _, inter = intermediates.apply(model, params, jnp.asarray(x))
  assert m.shape == (2, 2, 4, 4)
  np.testing.assert_allclose(
      m[1, 0], np.asarray(inter['mlp_hidden'][1])[0, 1:, 5].reshape(4, 4),
      rtol=1e-5, atol=1e-6)


def test_without_attention_tokens_are_perfectly_local(mu):
  model, params, x = mu
  # Zeroing the attention output projections leaves each patch token a
  # function of its own patch only: all gradient mass on its own patch.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if any(
          getattr(k, 'key', None) == 'out' for k in p) else v, params)
  loc = spatial.locality(model, params, x, 'mlp', 3, per_side=2)
  np.testing.assert_allclose(loc['own'], 1.0, atol=1e-6)
  assert loc['chance_own'] == pytest.approx(1 / 16)


def test_locality_is_a_share(mu):
  model, params, x = mu
  loc = spatial.locality(model, params, x, 'block', 1, per_side=2)
  assert loc['own'].shape == (2,)
  assert ((loc['own'] > 0) & (loc['own'] <= loc['neighbourhood'])).all()
  assert (loc['neighbourhood'] <= 1 + 1e-6).all()


def test_bad_index_names_range(mu):
  model, params, x = mu
  with pytest.raises(validate.AnalysisError, match=r'allowed 0\.\.127'):
    spatial.maps(model, params, x, 'mlp', 500)
  with pytest.raises(validate.AnalysisError, match=r'layer 7 .*allowed 0\.\.1'):
    spatial.maps(model, params, x, 'mlp', 0, layers=[7])
