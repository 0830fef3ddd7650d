"""Pre-training a ViT from scratch (the AugReg recipe, Steiner et al. 2021).

    python -m vit_jax.main --config=configs/pretrain.py:b16,imagenet2012 \
        --workdir=DIR

AdamW (b2 0.999), base lr 1e-3, decoupled weight decay 0.1 on kernels,
10k warmup steps then cosine decay, global-norm clipping at 1, batch 4096,
inception crop + flip at 224 px, optional mixup (`mixup_alpha`), 300 epochs
of ImageNet-1k. `configs/cpu.py:cifar10_scratch32` is the CPU-sized version.
"""

from configs import common
from vit_jax import config_lib

# The argument after ':' (`python -m vit_jax.main --help` lists it).
ARGUMENT = 'MODEL,DATASET[,res=N,steps=N,batch=N,lr=X]'


def get_config(arg=None):
  config = common.get_config()
  parsed = config_lib.parse_arg(arg, models=common.MODELS,
                                datasets=common.DATASETS)
  config_lib.apply(config, parsed, models=common.MODELS,
                   datasets=common.DATASETS)
  config.image_size = 224
  config.data.pp_train = common.PP_PRETRAIN
  config.data.pp_eval = common.PP_EVAL_CROP
  config.batch_size = 4096
  config.eval_batch_size = 1024
  config.total_steps = 93_000      # 300 epochs of ImageNet-1k at 4096
  config.warmup_steps = 10_000
  config.optim = common.optim_config(
      name='adamw', base_lr=1e-3, weight_decay=0.1, b1=0.9, b2=0.999,
      grad_clip_norm=1.0, schedule='cosine')
  config.mixup_alpha = 0.0         # AugReg 'medium' uses 0.2 to 0.5
  for k, v in parsed.overrides.items():  # res=/steps=/... win over defaults
    config_lib.set_value(config, k, v)
  return config.lock()
