"""Tests of vit_jax.training.optim: schedules against closed forms, weight-decay mask,
SGD / AdamW updates against hand-written numpy, clipping, bad names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from vit_jax.training import optim


def test_warmup_then_cosine_matches_formula():
  f = optim.make_schedule('cosine', base_lr=0.1, total_steps=100,
                          warmup_steps=10, end_lr=0.001)
  for step in [0, 4, 9]:
    assert np.isclose(f(step), 0.1 * (step + 1) / 10)
  for step in [10, 40, 77, 99, 100, 150]:
    frac = min((step - 10) / 90, 1.0)
    want = 0.001 + (0.1 - 0.001) * 0.5 * (1 + np.cos(np.pi * frac))
    assert np.isclose(f(step), want, rtol=1e-6), step


def test_linear_constant_rsqrt():
  lin = optim.make_schedule('linear', base_lr=1.0, total_steps=11,
                            warmup_steps=1)
  assert np.allclose([lin(s) for s in (1, 6, 11)], [1.0, 0.5, 0.0])
  const = optim.make_schedule('constant', base_lr=0.3, total_steps=50,
                              warmup_steps=5)
  assert np.allclose([const(s) for s in (2, 5, 49)], [0.18, 0.3, 0.3])
  rs = optim.make_schedule('rsqrt', base_lr=1.0, total_steps=1000,
                           warmup_steps=100)
  assert np.isclose(rs(99), 1.0)
  assert np.isclose(rs(399), np.sqrt(100 / 400))


def test_bad_schedule_and_optimizer_names():
  with pytest.raises(ValueError, match=r'schedule=.*allowed: cosine'):
    optim.make_schedule('step', base_lr=1, total_steps=10)
  c = common.optim_config(name='lamb')
  with pytest.raises(ValueError, match=r"optim.name='lamb'; allowed: sgd"):
    optim.make(c, total_steps=10, warmup_steps=0)


PARAMS = {
    'embedding': {'kernel': np.ones((2, 2, 3, 4)), 'bias': np.ones(4)},
    'Transformer': {
        'posembed_input': {'pos_embedding': np.ones((1, 5, 4))},
        'encoder_norm': {'scale': np.ones(4), 'bias': np.ones(4)},
        'encoderblock_0': {'MlpBlock_3': {'Dense_0': {
            'kernel': np.ones((4, 8)), 'bias': np.ones(8)}}}},
    'cls': np.ones((1, 1, 4)),
    'head': {'kernel': np.ones((4, 3)), 'bias': np.ones(3)},
}


def test_decay_mask_only_kernels():
  mask = optim.decay_mask(PARAMS)
  flat = {'/'.join(str(getattr(k, 'key', k)) for k in p): v
          for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert {k for k, v in flat.items() if v} == {
      'embedding/kernel', 'head/kernel',
      'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'}


def _cfg(**kw):
  return common.optim_config(**kw)


def _kernel_mask(tree):
  """True at leaves named 'kernel' (the decayed ones), built here by name."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', tree)


def _tree(x):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), x)


def test_sgd_momentum_weight_decay_matches_numpy():
  c = _cfg(name='sgd', base_lr=0.1, schedule='constant', momentum=0.9,
           momentum_dtype='float32', weight_decay=0.01, grad_clip_norm=0)
  tx, _ = optim.make(c, total_steps=10, warmup_steps=0)
  params = _tree(PARAMS)
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), PARAMS)
           for _ in range(3)]
  state = tx.init(params)
  p_np = jax.tree.map(np.asarray, params)
  m_np = jax.tree.map(np.zeros_like, p_np)
  mask = _kernel_mask(PARAMS)
  for g in grads:
    upd, state = tx.update(_tree(g), state, params)
    params = jax.tree.map(lambda a, b: a + b, params, upd)
    g_wd = jax.tree.map(lambda g_, p, d: g_ + (0.01 * p if d else 0), g, p_np,
                        mask)
    m_np = jax.tree.map(lambda m, g_: 0.9 * m + g_, m_np, g_wd)
    p_np = jax.tree.map(lambda p, m: p - 0.1 * m, p_np, m_np)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_np)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sgd_bfloat16_momentum_state():
  tx, _ = optim.make(_cfg(momentum_dtype='bfloat16'), total_steps=10,
                     warmup_steps=2)
  state = tx.init(_tree(PARAMS))
  dtypes = {x.dtype for x in jax.tree.leaves(state) if x.ndim > 0}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}


def test_adamw_matches_numpy_and_skips_non_kernels():
  c = _cfg(name='adamw', base_lr=0.01, schedule='constant', b1=0.9,
           b2=0.99, eps=1e-8, weight_decay=0.1, grad_clip_norm=0)
  tx, _ = optim.make(c, total_steps=10, warmup_steps=0)
  params = _tree(PARAMS)
  state = tx.init(params)
  mask = _kernel_mask(PARAMS)
  rng = np.random.default_rng(1)
  p_np = jax.tree.map(np.asarray, params)
  m = jax.tree.map(np.zeros_like, p_np)
  v = jax.tree.map(np.zeros_like, p_np)
  for t in range(1, 4):
    g = jax.tree.map(lambda p: rng.normal(size=p.shape), PARAMS)
    upd, state = tx.update(_tree(g), state, params)
    params = jax.tree.map(lambda a, b: a + b, params, upd)
    m = jax.tree.map(lambda m_, g_: 0.9 * m_ + 0.1 * g_, m, g)
    v = jax.tree.map(lambda v_, g_: 0.99 * v_ + 0.01 * g_ ** 2, v, g)

    def step(p, m_, v_, d, t=t):
      mh, vh = m_ / (1 - 0.9 ** t), v_ / (1 - 0.99 ** t)
      return p - 0.01 * (mh / (np.sqrt(vh) + 1e-8) + (0.1 * p if d else 0))
    p_np = jax.tree.map(step, p_np, m, v, mask)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_np)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_global_norm_clipping():
  tx, _ = optim.make(_cfg(schedule='constant', base_lr=1.0, momentum=0,
                          momentum_dtype='float32', grad_clip_norm=1.0),
                     total_steps=10, warmup_steps=0)
  params = _tree(PARAMS)
  g = jax.tree.map(lambda p: 10 * jnp.ones_like(p), params)
  upd, _ = tx.update(g, tx.init(params), params)
  norm = np.sqrt(sum(float(jnp.sum(u ** 2)) for u in jax.tree.leaves(upd)))
  assert np.isclose(norm, 1.0, rtol=1e-5)
