"""The erf GELU against scipy's normal CDF (float64) and jax.nn.gelu."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vit_jax.models import gelu


def test_gelu_equals_x_times_normal_cdf():
  x = np.linspace(-12, 12, 100_001).astype(np.float32)
  x64 = x.astype(np.float64)
  want = x64 * stats.norm.cdf(x64)
  got = np.asarray(gelu.gelu(jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
  np.testing.assert_allclose(
      got, jax.nn.gelu(jnp.asarray(x), approximate=False), rtol=0, atol=2e-6)
  # Gradient: Phi(x) + x phi(x).
  grad = np.asarray(jax.vmap(jax.grad(gelu.gelu))(jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(
      grad, stats.norm.cdf(x64) + x64 * stats.norm.pdf(x64), rtol=0,
      atol=1e-5)


def test_gelu_keeps_dtype():
  x = jnp.linspace(-4, 4, 101)
  y = gelu.gelu(x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), gelu.gelu(x), rtol=0,
                             atol=0.03)
