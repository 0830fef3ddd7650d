"""The MLP activations of ViT, hybrids, Mixer and the MAP head.

Two forms of GELU(x) = x * Phi(x):
  'gelu_tanh'  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), i.e.
               `flax.linen.gelu` = `jax.nn.gelu(approximate=True)`: the form
               the official google-research/vision_transformer code calls and
               that trained the released ViT, hybrid and Mixer checkpoints (the
               default everywhere here); timm's `GELUTanh`.
  'gelu_erf'   0.5 x (1 + erf(x / sqrt(2))), the exact form: PyTorch's
               `gelu`, timm's default `nn.GELU`.
The two differ by up to ~5e-4 per unit; through a 12-block ViT-Ti/16 that is
~3e-2 in the logits, so a checkpoint should run with the form it was trained
with.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

_SQRT_HALF = float(np.sqrt(0.5))


def gelu_erf(x: jax.Array) -> jax.Array:
  """0.5 x (1 + erf(x / sqrt(2))), elementwise, in x's dtype.

  `jax.nn.gelu(x, approximate=False)` computes the same function through
  `erfc`, whose two-branch expansion makes XLA:CPU's forward ~2x slower;
  outputs differ by float32 rounding (< 1e-6 for |x| < 8).
  """
  return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


def gelu_tanh(x: jax.Array) -> jax.Array:
  """The tanh form, exactly `flax.linen.gelu` (module doc)."""
  return jax.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'gelu_tanh': gelu_tanh,
    'gelu_erf': gelu_erf,
}
DEFAULT = 'gelu_tanh'


def get(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation called `name` (a key of ACTIVATIONS)."""
  if name not in ACTIVATIONS:
    raise ValueError(f'mlp_activation={name!r}; allowed: '
                     f'{", ".join(ACTIVATIONS)}')
  return ACTIVATIONS[name]
