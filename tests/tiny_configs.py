"""The tiny models and configs the tests share (one place to change them).

  train_config(**overrides): the experiment config of a mu/16 run on 32 px
      synthetic data (2 blocks, width 32, 2x2 patches + class token; 1,024
      train / 200 eval examples, 10 classes), 6 steps of batch 16, float32
      momentum, no periodic eval or checkpoint. Overrides are dotted keys:
      `train_config(**{'optim.name': 'adamw'}, total_steps=4)`.
  TRANSFORMER: constructor overrides that shrink any registry ViT, hybrid or
      ViTC to one block of width 32 (for tests of stems, heads, loaders).
  ANALYSIS_MODEL: the `--model/--resolution` arguments of the analysis CLI
      tests (a random-init mu/16 at 32 px).
  random_model_params(model, size, seed): every parameter of `model` random
      (`golden_inputs.random_params` over the shapes of an abstract init:
      non-zero head and biases, non-trivial norms), nothing compiled.
"""

import functools

import jax
import jax.numpy as jnp

from configs import vit as vit_config
from tests import golden_inputs
from vit_jax.checkpoints import npz

TRANSFORMER = dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1)
ANALYSIS_MODEL = ['--model', 'mu/16', '--resolution', '32']


def train_config(**overrides):
  """mu/16 on 32 px synthetic data (module doc); dotted-key overrides."""
  config = vit_config.get_config('mu16,synthetic,res=32')
  config.batch_size = 16
  config.eval_batch_size = 40
  config.total_steps = 6
  config.warmup_steps = 2
  config.log_every = 1
  config.eval_every = 0
  config.checkpoint_every = 0
  config.optim.momentum_dtype = 'float32'
  for k, v in overrides.items():
    node = config
    *parents, last = k.split('.')
    for p in parents:
      node = node[p]
    node[last] = v
  return config


def random_model_params(model, size: int, seed: int, **init_kwargs):
  """{module: {leaf: float32 numpy array}} in `model`'s parameter shapes at
  `size` px (from `jax.eval_shape` of its init, with `init_kwargs`), drawn
  by `golden_inputs.random_params(shapes, seed)`."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, **init_kwargs),
                          jax.random.key(0), x)
  return npz.unflatten(golden_inputs.random_params(
      {k: v.shape for k, v in npz.flatten(shapes).items()}, seed))
