"""Known-answer tests of attention maps, rollout and mean attention distance."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.spatial.distance

from vit_jax import models
from vit_jax.analysis import attention
from vit_jax.models import intermediates


def _random_attention(rng, layers=3, b=2, heads=2, n=5):
  a = rng.uniform(size=(layers, b, heads, n, n))
  return list(a / a.sum(-1, keepdims=True))


def test_rollout_of_identity_attention_is_identity():
  eye = np.broadcast_to(np.eye(10), (2, 3, 10, 10))
  r = attention.rollout([eye] * 4)
  np.testing.assert_allclose(r, np.broadcast_to(np.eye(10), (2, 10, 10)),
                             atol=1e-6)


def test_rollout_matches_loop_reference():
  rng = np.random.default_rng(0)
  att = _random_attention(rng)
  ref = np.eye(5)[None].repeat(2, 0)
  for a in att:  # independent loop: mix, renormalize, multiply on the left
    m = 0.5 * a.mean(1) + 0.5 * np.eye(5)
    m = m / m.sum(-1, keepdims=True)
    ref = np.einsum('bij,bjk->bik', m, ref)
  np.testing.assert_allclose(attention.rollout(att), ref, rtol=1e-5)
  np.testing.assert_allclose(attention.rollout(att).sum(-1), 1.0, rtol=1e-5)


def test_rollout_without_residual_is_product_of_attention():
  rng = np.random.default_rng(1)
  att = _random_attention(rng, layers=2, heads=1)
  ref = att[1][:, 0] @ att[0][:, 0]
  np.testing.assert_allclose(attention.rollout(att, residual=0.0), ref,
                             rtol=1e-5)


def test_mean_distance_of_uniform_attention_is_mean_pairwise_distance():
  grid, px = (4, 6), (16, 16)
  n = 1 + grid[0] * grid[1]
  uniform = np.full((2, 3, n, n), 1.0 / n)
  d = attention.mean_distance([uniform, uniform], grid, px, num_prefix=1)
  yy, xx = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing='ij')
  pts = np.stack([yy.ravel(), xx.ravel()], -1) * 16.0
  pair = scipy.spatial.distance.squareform(
      scipy.spatial.distance.pdist(pts))
  expected = pair.mean()  # over all (query, key) pairs, self included
  assert d.shape == (2, 3)
  np.testing.assert_allclose(d, expected, rtol=1e-5)


def test_mean_distance_of_self_attention_is_zero_and_neighbour_is_patch():
  grid = (3, 3)
  eye = np.eye(9)[None, None]
  np.testing.assert_allclose(
      attention.mean_distance([eye], grid, (16, 16), num_prefix=0), 0.0,
      atol=1e-6)
  right = np.zeros((1, 1, 9, 9))  # each query attends to its right neighbour
  for i in range(9):
    y, x = divmod(i, 3)
    right[0, 0, i, y * 3 + min(x + 1, 2) if x < 2 else y * 3 + x - 1] = 1
  np.testing.assert_allclose(
      attention.mean_distance([right], grid, (16, 16), num_prefix=0), 16.0,
      rtol=1e-6)


def test_cls_maps_pick_class_token_row():
  rng = np.random.default_rng(2)
  att = _random_attention(rng, n=7)  # 1 + 2x3
  m = attention.cls_maps(att, (2, 3), num_prefix=1)
  assert m.shape == (3, 2, 2, 2, 3)
  np.testing.assert_allclose(m[1, 0, 1].ravel(), att[1][0, 1, 0, 1:],
                             rtol=1e-6)


def test_real_model_attention_rows_are_distributions():
  model = models.get_model('mu/16', num_classes=3)
  params = jax.jit(model.init)(jax.random.key(0),
                               jnp.zeros((1, 48, 48, 3)))['params']
  x = jax.random.uniform(jax.random.key(1), (2, 48, 48, 3), minval=-1)
  att = jax.jit(lambda p, x: intermediates.apply(model, p, x)[1]['attention'])(
      params, x)
  roll = attention.rollout_map(att, (3, 3), num_prefix=1)
  assert roll.shape == (2, 3, 3)
  np.testing.assert_allclose(attention.rollout(att).sum(-1), 1.0, rtol=1e-5)
  d = attention.mean_distance(att, (3, 3), (16, 16))
  pair_max = np.sqrt(2) * 32
  assert d.shape == (2, 2) and (d > 0).all() and (d < pair_max).all()
