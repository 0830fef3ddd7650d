"""Shared defaults of every training config, and the model/dataset presets.

A config is the record of an experiment: every knob of a run is here, `main`
only wires. Config files (`vit.py`, `mixer.py`, `pretrain.py`, `cpu.py`) start
from `get_config()` and apply presets picked by the string after ':' (see
`vit_jax.config_lib.parse_arg`).

Placeholders `{image_size}` and `{resize_size}` in the pp strings are filled
in at run time from `config.image_size` and `config.resize_size`, so
`--config.image_size=160` changes the model and the preprocessing together.
"""

import os
import pathlib

import ml_collections


def _shared_data() -> str:
  """$VIT_JAX_SHARED_DATA; else ../shared/data next to the repository, or,
  for the copy installed inside the package (vit_jax/configs), next to the
  working directory."""
  if 'VIT_JAX_SHARED_DATA' in os.environ:
    return os.environ['VIT_JAX_SHARED_DATA']
  here = pathlib.Path(__file__).resolve().parent
  root = pathlib.Path.cwd() if here.parent.name == 'vit_jax' else here.parent
  return str(root.parent / 'shared' / 'data')


# The real data folder (checkpoints, CIFAR-10 JPEGs, ImageNet samples).
SHARED_DATA = _shared_data()

PP_FINETUNE = ('decode|resize({resize_size})|random_crop({image_size})|'
               'flip_lr|value_range(-1,1)')
PP_PRETRAIN = 'decode|inception_crop({image_size})|flip_lr|value_range(-1,1)'
PP_EVAL = 'decode|resize({image_size})|value_range(-1,1)'
PP_EVAL_CROP = ('decode|resize({resize_size})|central_crop({image_size})|'
                'value_range(-1,1)')


def data_config(**kw) -> ml_collections.ConfigDict:
  """The `config.data` block: the contract with `vit_jax.data.input_pipeline`."""
  d = ml_collections.ConfigDict(dict(
      dataset='cifar10',         # tfds name | 'digits' | 'folder:/path' | dir
      train_split='train[:98%]',
      eval_split='test',
      pp_train=PP_FINETUNE,
      pp_eval=PP_EVAL,
      tfds_data_dir=ml_collections.FieldReference(None, field_type=str),
      tfds_manual_dir=ml_collections.FieldReference(None, field_type=str),
      shuffle_buffer=50_000,
      cache=True,                # keep decoded images in memory
      prefetch=2,                # batches prepared ahead on the host
  ))
  d.update(kw)
  return d


def optim_config(**kw) -> ml_collections.ConfigDict:
  """The `config.optim` block (see `vit_jax.training.optim`)."""
  o = ml_collections.ConfigDict(dict(
      name='sgd',                # sgd | adamw
      base_lr=0.03,
      end_lr=0.0,
      schedule='cosine',         # cosine | linear | constant | rsqrt
      weight_decay=0.0,          # decoupled; kernels only
      grad_clip_norm=1.0,        # 0 disables clipping
      momentum=0.9,              # sgd
      momentum_dtype='bfloat16',  # sgd accumulator: bfloat16 | float32
      nesterov=False,            # sgd
      b1=0.9, b2=0.999, eps=1e-8,  # adamw
  ))
  o.update(kw)
  return o


def perf_config(**kw) -> ml_collections.ConfigDict:
  """The `config.perf` block: how the steps are computed, never what
  (`vit_jax.perf.hooks`; docs/performance.md). 'auto' = the measured
  default on a single-device CPU, the stock path elsewhere."""
  p = ml_collections.ConfigDict(dict(
      cpu_gemm='auto',           # auto | on | off: OpenBLAS fp32 products
      attention='auto',          # auto | einsum | xla | custom_grad | cudnn
      cudnn_seq_multiple=8,      # attention='cudnn': pad sequences to this
      conv='auto',               # auto | xla | pointwise | im2col | implicit_gemm
      group_norm='auto',         # auto | flax | two_stage
      weight_std='auto',         # auto | plain | custom_grad
      # Independent parts each (accumulation) micro-batch and eval batch
      # is computed in, run side by side by XLA:CPU (vit_jax.perf.
      # microbatch); 0 = auto.
      microbatches=0,
      host_malloc='auto',        # auto | on | off: glibc malloc for XLA:CPU
  ))
  p.update(kw)
  return p


def get_config() -> ml_collections.ConfigDict:
  """Defaults: fine-tuning a ViT-B/16 on CIFAR-10 (the official recipe)."""
  c = ml_collections.ConfigDict()
  c.trainer = 'train'            # train | evaluate | inference_time
  c.seed = 0

  # Model: any name of the vit_jax.models registry; `model` holds
  # constructor overrides (dropout_rate, classifier, num_layers, ...).
  # mlp_activation: gelu_tanh (flax.linen.gelu, the form that trained the
  # released checkpoints) | gelu_erf (exact; timm's default).
  # scan_layers: blocks as one nn.scan, parameters stacked [L, ...] (one
  # block compiled; .npz files stay per block; vit_jax.models.scan).
  # remat_policy: recompute in the backward pass, per block: none |
  # nothing_saveable | dots_saveable | dots_with_no_batch_dims_saveable.
  c.model_name = 'B/16'
  c.model = ml_collections.ConfigDict(dict(
      mlp_activation='gelu_tanh', scan_layers=False, remat_policy='none'))
  # A patch size that no released checkpoint or preset uses (B/17) is
  # refused as a likely typo unless this is True (vit_jax.config_lib).
  c.allow_custom_model = False
  c.dtype = 'float32'            # compute dtype: float32 | bfloat16
  c.image_size = 384
  # Fine-tune pp resizes to 8/7 of the crop, then crops (follows image_size).
  c.resize_size = c.get_ref('image_size') * 8 // 7
  # Initialize from an official .npz or one of our Orbax checkpoint dirs
  # (position embeddings are resampled, a new head is zero-initialized).
  c.pretrained_path = ml_collections.FieldReference(None, field_type=str)

  c.data = data_config()
  c.batch_size = 512             # global, over all processes
  c.eval_batch_size = 512
  c.accum_steps = 1              # micro-batches per step (grad accumulation)
  c.total_steps = 10_000
  c.warmup_steps = 500
  c.optim = optim_config()
  c.mixup_alpha = 0.0            # > 0: mixup with Beta(alpha, alpha)
  c.label_smoothing = 0.0

  # Mesh axis sizes (-1 = the rest of the devices), partition rule set.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.partition_rules = 'default'  # see vit_jax.training.sharding.RULES
  c.perf = perf_config()         # speed only (vit_jax.perf.hooks)

  c.log_every = 10
  c.eval_every = 1000            # also at the end; 0 = only at the end
  c.eval_at_start = False        # also evaluate before the first step
  c.checkpoint_every = 500       # also at the end; 0 = only at the end
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  # A resume refuses a config that changes the meaning of the recorded run
  # (vit_jax.training.config_record) unless the changed keys are listed here
  # (comma-separated keys or prefixes, e.g. 'batch_size,optim', or 'all').
  c.allow_config_change = ''
  return c


# Model presets: arg name -> (registry name, overrides).
MODELS = {
    'mu4': ('mu/4', {}),
    'mu16': ('mu/16', {}),
    'ti16': ('Ti/16', {}),
    's16': ('S/16', {}),
    's32': ('S/32', {}),
    'b16': ('B/16', {}),
    'b32': ('B/32', {}),
    'l16': ('L/16', {}),
    'r26s32': ('R26+S/32', {}),
    'r50b16': ('R50+B/16', {}),
    'rti16': ('R_Ti/16', {}),
    'mixer_b16': ('Mixer-B_16', {}),
    'mixer_mu16': ('Mixer-mu_16', {}),
    'bit_r8': ('BiT-R8', {}),
    'bit_r26': ('BiT-R26', {}),
    # A small ViT for 32 px CIFAR from scratch on a CPU: width 128, 4 blocks
    # of 4 heads, MLP 512, 4x4 patches (64 tokens at 32 px), class token.
    'vit_c4': ('Ti/4', dict(hidden_size=128, mlp_dim=512, num_heads=4,
                            num_layers=4)),
}

# Dataset presets: arg name -> config overrides (data keys under 'data').
DATASETS = {
    'cifar10': dict(total_steps=10_000, warmup_steps=500,
                    data=dict(dataset='cifar10', train_split='train[:98%]',
                              eval_split='test')),
    'cifar100': dict(total_steps=10_000, warmup_steps=500,
                     data=dict(dataset='cifar100', train_split='train[:98%]',
                               eval_split='test')),
    'pets': dict(total_steps=500, warmup_steps=100,
                 data=dict(dataset='oxford_iiit_pet',
                           train_split='train[:90%]', eval_split='test')),
    'imagenet2012': dict(total_steps=20_000, warmup_steps=500,
                         data=dict(dataset='imagenet2012',
                                   train_split='train[:99%]',
                                   eval_split='validation',
                                   pp_eval=PP_EVAL_CROP)),
    # The real CIFAR-10 as a folder of JPEGs ({train,test}/<class>/*.jpg).
    'cifar10_folder': dict(total_steps=10_000, warmup_steps=500,
                           data=dict(dataset=f'folder:{SHARED_DATA}/cifar10',
                                     train_split='train', eval_split='test')),
    # The same folder decoded once into memory (vit_jax.data.inmemory):
    # fast on a CPU, used for the runs of docs/training.md.
    'cifar10_mem': dict(total_steps=10_000, warmup_steps=500,
                        data=dict(dataset=f'inmemory:{SHARED_DATA}/cifar10',
                                  train_split='train', eval_split='test')),
    # Embedded offline default: scikit-learn's 1,797 8x8 handwritten digits.
    'digits': dict(total_steps=300, warmup_steps=30,
                   data=dict(dataset='digits', train_split='train',
                             eval_split='test', shuffle_buffer=2_000)),
    # Random class-dependent images generated in memory (tests, benchmarks).
    'synthetic': dict(total_steps=100, warmup_steps=10,
                      data=dict(dataset='synthetic', train_split='train',
                                eval_split='test')),
}


def with_presets(arg=None) -> ml_collections.ConfigDict:
  """`get_config()` with the `MODEL,DATASET[,key=value...]` argument applied."""
  from vit_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = get_config()
  config_lib.apply(config, config_lib.parse_arg(arg, models=MODELS,
                                                datasets=DATASETS),
                   models=MODELS, datasets=DATASETS)
  return config
