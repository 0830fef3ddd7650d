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
"""

from configs import vit as vit_config

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
