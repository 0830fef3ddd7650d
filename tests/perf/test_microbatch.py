"""vit_jax.perf.microbatch: the split, the automatic choice, and that a model's
logits and gradients do not change when computed in independent parts."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import golden_inputs
from tests.tiny_configs import random_model_params
from vit_jax import models
from vit_jax.perf import microbatch

CPU = types.SimpleNamespace(platform='cpu')
GPU = types.SimpleNamespace(platform='gpu')


def test_split_deals_rows_round_robin_and_merge_restores_them():
  x = np.arange(12 * 2).reshape(12, 2)
  parts = microbatch.split(jnp.asarray(x), 3)
  assert len(parts) == 3
  for i, p in enumerate(parts):
    np.testing.assert_array_equal(np.asarray(p), x[i::3])
  np.testing.assert_array_equal(np.asarray(microbatch.merge(parts)), x)
  with pytest.raises(ValueError, match='batch of 12 does not split into 5'):
    microbatch.split(jnp.asarray(x), 5)


def test_resolve():
  # Automatic: the per-kind number on one CPU device, the largest divisor of
  # the batch below it, and 1 on accelerators or several devices.
  assert microbatch.resolve(0, 'infer', 32, [CPU]) == 4
  assert microbatch.resolve(0, 'train', 32, [CPU]) == 2
  assert microbatch.resolve(0, 'infer', 6, [CPU]) == 3
  assert microbatch.resolve(0, 'infer', 7, [CPU]) == 1
  assert microbatch.resolve(0, 'infer', 32, [GPU]) == 1
  assert microbatch.resolve(0, 'train', 32, [CPU, CPU]) == 1
  # Large images: each op keeps the cores busy on its own.
  assert microbatch.resolve(0, 'infer', 32, [CPU], resolution=224) == 4
  assert microbatch.resolve(0, 'infer', 32, [CPU], resolution=384) == 1
  assert microbatch.resolve(2, 'infer', 32, [CPU], resolution=384) == 2
  # Explicit values are kept, on any device.
  assert microbatch.resolve(8, 'infer', 32, [GPU]) == 8
  with pytest.raises(ValueError, match='perf.microbatches=3 does not '
                     'divide the batch of 32'):
    microbatch.resolve(3, 'train', 32, [CPU])
  with pytest.raises(ValueError, match='must be >= 0'):
    microbatch.resolve(-1, 'train', 32, [CPU])
  with pytest.raises(ValueError, match="kind='eval'"):
    microbatch.resolve(0, 'eval', 32, [CPU])


@pytest.fixture(scope='module')
def tiny_vit():
  """A one-block mu/16 with random parameters (`golden_inputs`: a non-zero
  head, so the logits are not init's zeros) and a batch of 4 images."""
  model = models.get_model('mu/16', num_classes=10, num_layers=1)
  x = jnp.asarray(golden_inputs.random_images(0, 4, 32))
  params = jax.tree.map(jnp.asarray, random_model_params(model, 32, seed=1))
  return model, params, x


def test_map_batch_gives_the_same_logits(tiny_vit):
  """Logits in 2 and in 4 (one-row) micro-batches against the whole batch;
  a pytree output merged leaf by leaf."""
  model, params, x = tiny_vit
  fn = lambda im: model.apply({'params': params}, im)
  want = np.asarray(jax.jit(fn)(x))
  assert np.abs(want).max() > 0.1
  pair_fn = lambda im: (fn(im), im.sum((1, 2, 3)))
  for k in (2, 4):
    logits, sums = jax.jit(lambda im, k=k: microbatch.map_batch(
        pair_fn, im, k))(x)
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(sums),
                               np.asarray(x).sum((1, 2, 3)), rtol=1e-5)


def test_mean_value_and_grad_equals_the_whole_batch(tiny_vit):
  """Loss and gradients of 2 micro-batches against value_and_grad of the
  whole batch."""
  model, params, x = tiny_vit
  labels = jnp.arange(4) % 10

  def loss_fn(p, im, lab, rng):
    del rng
    logits = model.apply({'params': p}, im)
    return optax.softmax_cross_entropy_with_integer_labels(logits, lab).mean()

  want_loss, want_grads = jax.jit(jax.value_and_grad(loss_fn))(
      params, x, labels, None)
  loss, grads = jax.jit(microbatch.mean_value_and_grad(loss_fn, 2))(
      params, x, labels, None)
  np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                               atol=1e-6)


def test_mean_value_and_grad_gives_each_part_its_own_rng():
  seen = []

  def loss_fn(p, x, rng):
    seen.append(rng)
    return jnp.mean(p * x)

  fn = microbatch.mean_value_and_grad(loss_fn, 2)
  fn(jnp.ones(()), jnp.arange(4.0), jax.random.key(0))
  assert len(seen) == 2
  a, b = (np.asarray(jax.random.key_data(r)) for r in seen)
  assert not np.array_equal(a, b)
  want = np.asarray(jax.random.key_data(jax.random.fold_in(
      jax.random.key(0), 1)))
  np.testing.assert_array_equal(b, want)
