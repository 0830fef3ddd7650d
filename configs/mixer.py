"""Fine-tuning an MLP-Mixer: `configs/mixer.py:mixer_b16,cifar10`.

Same recipe as `configs/vit.py` (SGD momentum, cosine, 384 px); the model
presets starting with 'mixer_' are the Mixer ones (default Mixer-B/16).
"""

from configs import common
from vit_jax import config_lib

# The argument after ':' (`python -m vit_jax.main --help` lists it).
ARGUMENT = 'MODEL,DATASET[,res=N,steps=N,batch=N,lr=X]'

MODELS = {k: v for k, v in common.MODELS.items() if k.startswith('mixer_')}


def get_config(arg=None):
  config = common.get_config()
  config.model_name = 'Mixer-B_16'
  parsed = config_lib.parse_arg(arg, models=MODELS, datasets=common.DATASETS)
  config_lib.apply(config, parsed, models=MODELS, datasets=common.DATASETS)
  return config.lock()
