"""Both GELU forms against independent formulas: scipy's normal CDF (erf
form), numpy's tanh (tanh form), and flax.linen.gelu (the official code's)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vit_jax.models import gelu

X = np.linspace(-12, 12, 100_001).astype(np.float32)
X64 = X.astype(np.float64)


def test_gelu_erf_equals_x_times_normal_cdf():
  want = X64 * stats.norm.cdf(X64)
  got = np.asarray(gelu.gelu_erf(jnp.asarray(X)), np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
  np.testing.assert_allclose(
      got, jax.nn.gelu(jnp.asarray(X), approximate=False), rtol=0, atol=2e-6)
  # Gradient: Phi(x) + x phi(x).
  grad = np.asarray(jax.vmap(jax.grad(gelu.gelu_erf))(jnp.asarray(X)),
                    np.float64)
  np.testing.assert_allclose(
      grad, stats.norm.cdf(X64) + X64 * stats.norm.pdf(X64), rtol=0,
      atol=1e-5)


def test_gelu_tanh_is_flax_linen_gelu_and_the_tanh_formula():
  got = np.asarray(gelu.gelu_tanh(jnp.asarray(X)))
  np.testing.assert_array_equal(got, np.asarray(nn.gelu(jnp.asarray(X))))
  want = 0.5 * X64 * (1 + np.tanh(np.sqrt(2 / np.pi) *
                                  (X64 + 0.044715 * X64 ** 3)))
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_the_two_forms_differ_enough_to_matter():
  """~1.6e-4 at x = +-2.2 ... the gap the released checkpoints would see."""
  diff = np.abs(np.asarray(gelu.gelu_tanh(jnp.asarray(X))) -
                np.asarray(gelu.gelu_erf(jnp.asarray(X))))
  assert 1e-4 < diff.max() < 1e-3


def test_default_is_the_official_form_and_unknown_names_fail():
  assert gelu.get(gelu.DEFAULT) is gelu.gelu_tanh
  with pytest.raises(ValueError, match="mlp_activation='relu'.*gelu_tanh"):
    gelu.get('relu')


@pytest.mark.parametrize('name', sorted(gelu.ACTIVATIONS))
def test_gelu_keeps_dtype(name):
  f = gelu.get(name)
  x = jnp.linspace(-4, 4, 101)
  y = f(x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), f(x), rtol=0, atol=0.03)
