"""CPU-sized experiments: the runs reported in docs/training.md.

    python -m vit_jax.main --config=configs/cpu.py:NAME --workdir=DIR

NAME is one of
  digits             mu/4 from scratch on scikit-learn's 8x8 digits at 32 px
                     (embedded, offline; a few minutes on a laptop CPU).
  cifar10_ft         the released ViT-Ti/16 (ImageNet-21k + 1k) fine-tuned on
                     the real CIFAR-10 JPEG folder at 96 px (position
                     embeddings resampled 14x14 -> 6x6), SGD momentum.
  cifar10_scratch32  a small ViT (`vit_c4`) pre-trained from scratch on
                     CIFAR-10 at 32 px with AdamW (the AugReg recipe, short).
  cifar10_ft64       that model fine-tuned at 64 px from the scratch32
                     checkpoint (set pretrained_path to its workdir), 8x8 ->
                     16x16 position embeddings.
Any key can still be overridden with --config.KEY=VALUE.
"""

from configs import common

# The argument after ':' (`python -m vit_jax.main --help` lists it).
ARGUMENT = 'EXPERIMENT'

EXPERIMENTS = ('digits', 'cifar10_ft', 'cifar10_scratch32', 'cifar10_ft64')
TI16 = f'{common.SHARED_DATA}/checkpoints/ViT-Ti_16-augreg-i21k-ft-i1k-224.npz'
CIFAR = f'inmemory:{common.SHARED_DATA}/cifar10'
PP_CIFAR_AUG = ('decode|resize({resize_size})|random_crop({image_size})|'
                'flip_lr|value_range(-1,1)')

# Digits are not mirror-symmetric: no flip.
PP_DIGITS = ('decode|resize({resize_size})|random_crop({image_size})|'
             'value_range(-1,1)')


def get_config(arg=None):
  if arg not in EXPERIMENTS:
    raise ValueError(f'configs/cpu.py:{arg}: unknown experiment; allowed: '
                     f'{", ".join(EXPERIMENTS)}')
  c = common.get_config()
  c.data = common.data_config(dataset=CIFAR, train_split='train',
                              eval_split='test', pp_train=PP_CIFAR_AUG,
                              pp_eval=common.PP_EVAL)
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 100
  c.eval_batch_size = 250
  if arg == 'digits':
    c.model_name = 'mu/4'
    c.data = common.data_config(dataset='inmemory:digits', train_split='train',
                                eval_split='test', shuffle_buffer=2_000,
                                pp_train=PP_DIGITS, pp_eval=common.PP_EVAL)
    c.image_size = 32
    c.resize_size = 36
    c.batch_size = 64
    c.eval_batch_size = 100
    c.total_steps = 300
    c.warmup_steps = 30
    c.eval_every = 100
    c.optim = common.optim_config(name='adamw', base_lr=3e-3,
                                  weight_decay=1e-4)
  elif arg == 'cifar10_ft':
    c.model_name = 'Ti/16'
    c.pretrained_path = TI16
    c.image_size = 96
    c.batch_size = 64
    c.total_steps = 500
    c.warmup_steps = 50
    c.optim = common.optim_config(name='sgd', base_lr=0.03, momentum=0.9,
                                  momentum_dtype='bfloat16')
  elif arg == 'cifar10_scratch32':
    c.model_name, model = common.MODELS['vit_c4']
    c.model.update(model)
    c.image_size = 32
    c.resize_size = 36
    c.batch_size = 128
    c.total_steps = 250
    c.warmup_steps = 25
    c.optim = common.optim_config(name='adamw', base_lr=2e-3,
                                  weight_decay=0.05, grad_clip_norm=1.0)
  elif arg == 'cifar10_ft64':
    c.model_name, model = common.MODELS['vit_c4']
    c.model.update(model)
    c.image_size = 64
    c.batch_size = 64
    c.total_steps = 100
    c.warmup_steps = 10
    c.eval_at_start = True
    c.optim = common.optim_config(name='sgd', base_lr=0.01, momentum=0.9,
                                  momentum_dtype='float32')
  return c.lock()
