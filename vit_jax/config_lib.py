"""Config arguments (`vit.py:b16,cifar10`), presets and validation.

`parse_arg('b16,cifar10,res=128', models=..., datasets=...)` splits the string
after ':' of `--config=configs/vit.py:...` into a model preset, a dataset
preset and `key=value` overrides. `validate(config, num_devices)` checks a
config before anything expensive happens; every error is one line naming the
key and the allowed values.
"""

import dataclasses
from typing import Any, Mapping, Optional

import ml_collections

TRAINERS = ('train', 'evaluate', 'inference_time')
DTYPES = ('float32', 'bfloat16')
# Model options a preset keeps from the defaults (configs/common.py).
KEPT_MODEL_KEYS = ('mlp_activation',)
# key=value shorthands accepted in the config argument.
SHORTHANDS = {'res': 'image_size', 'steps': 'total_steps',
              'batch': 'batch_size', 'lr': 'optim.base_lr'}


@dataclasses.dataclass(frozen=True)
class Arg:
  """A parsed config argument."""
  model: Optional[str]
  dataset: Optional[str]
  overrides: dict[str, str]


def parse_arg(arg: Optional[str], *, models: Mapping[str, Any],
              datasets: Mapping[str, Any]) -> Arg:
  """Parses 'MODEL,DATASET[,key=value...]' (each part optional).

  Raises:
    ValueError (one line) for a token that is neither a known model, a known
    dataset nor a known `key=value` shorthand.
  """
  model = dataset = None
  overrides = {}
  for tok in filter(None, (t.strip() for t in (arg or '').split(','))):
    if '=' in tok:
      k, v = tok.split('=', 1)
      if k not in SHORTHANDS:
        raise ValueError(f'config argument {tok!r}: unknown key {k!r}; '
                         f'allowed: {", ".join(SHORTHANDS)}')
      overrides[SHORTHANDS[k]] = v
    elif tok in models:
      model = tok
    elif tok in datasets:
      dataset = tok
    else:
      raise ValueError(
          f'config argument {tok!r} is neither a model ({", ".join(models)}) '
          f'nor a dataset ({", ".join(datasets)})')
  return Arg(model, dataset, overrides)


def set_value(config: ml_collections.ConfigDict, dotted: str,
              value: Any) -> None:
  """config['a.b.c'] = value, a string converted to the old value's type."""
  *parents, last = dotted.split('.')
  node = config
  for p in parents:
    node = node[p]
  old = node[last]
  if isinstance(value, str) and old is not None and not isinstance(old, str):
    if isinstance(old, bool):
      value = value.lower() in ('1', 'true', 'yes')
    elif isinstance(old, int):
      value = int(float(value))
    else:
      value = type(old)(value)
  node[last] = value


def apply(config: ml_collections.ConfigDict, arg: Arg, *,
          models: Mapping[str, Any],
          datasets: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Applies the presets and overrides of `arg` to `config` (in place)."""
  if arg.model is not None:
    name, overrides = models[arg.model]
    config.model_name = name
    config.model = ml_collections.ConfigDict(
        {**_kept_model_keys(config.model, name), **overrides})
  if arg.dataset is not None:
    preset = dict(datasets[arg.dataset])
    data = preset.pop('data', {})
    for k, v in preset.items():
      config[k] = v
    for k, v in data.items():
      config.data[k] = v
  for k, v in arg.overrides.items():
    set_value(config, k, v)
  return config


def _kept_model_keys(model_config, name: str) -> dict[str, Any]:
  """The keys of `model_config` that outlive a change of preset: those of
  `KEPT_MODEL_KEYS` the new model has (`mlp_activation`; not for a ResNet)."""
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  cls, _ = models.model_kwargs(name)
  fields = {f.name for f in dataclasses.fields(cls)}
  return {k: model_config[k] for k in KEPT_MODEL_KEYS
          if k in fields and k in model_config}


def resolve_pp(config) -> tuple[str, str]:
  """(pp_train, pp_eval) with {image_size}/{resize_size} filled in."""
  size = dict(image_size=config.image_size, resize_size=config.resize_size)
  return config.data.pp_train.format(**size), config.data.pp_eval.format(**size)


def local_data_config(config) -> ml_collections.ConfigDict:
  """`config.data` with the pp placeholders resolved (for input_pipeline)."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.pp_train, data.pp_eval = resolve_pp(config)
  return data


def _one_of(key: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ValueError(f'config.{key}={value!r}; allowed: '
                     f'{", ".join(map(str, allowed))}')


def validate_perf(config) -> None:
  """Checks `config.perf` (`vit_jax.perf.hooks`): known keys, allowed
  values, and micro-batches that divide the batches they split."""
  from vit_jax.perf import hooks  # pylint: disable=g-import-not-at-top
  if 'perf' not in config:
    raise ValueError('config.perf is missing; start from '
                     'configs/common.py:perf_config()')
  hooks.validate(config.perf)
  k = config.perf.get('microbatches', 0)
  if not k:
    return
  if 'accum_steps' in config:
    micro = config.batch_size // config.accum_steps
    if micro % k:
      raise ValueError(
          f'config.perf.microbatches={k} does not divide the micro-batch '
          f'of {micro} (config.batch_size={config.batch_size} / '
          f'config.accum_steps={config.accum_steps})')
  if 'eval_batch_size' in config and config.eval_batch_size % k:
    raise ValueError(f'config.perf.microbatches={k} does not divide '
                     f'config.eval_batch_size={config.eval_batch_size}')


def validate(config, num_devices: Optional[int] = None) -> None:
  """Checks `config`; raises ValueError with a one-line message on error."""
  # Imports kept local: configs are validated before heavy imports matter.
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  from vit_jax.training import optim  # pylint: disable=g-import-not-at-top
  from vit_jax.training import sharding  # pylint: disable=g-import-not-at-top

  _one_of('trainer', config.trainer, TRAINERS)
  _one_of('dtype', config.dtype, DTYPES)
  try:
    cls, _ = models.model_kwargs(config.model_name)
  except ValueError as e:
    raise ValueError(f'config.model_name: {e}') from None
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = set(config.model.keys()) - fields
  if unknown:
    raise ValueError(f'config.model: unknown option(s) {sorted(unknown)} for '
                     f'{config.model_name}; allowed: '
                     f'{", ".join(sorted(fields))}')
  if 'mlp_activation' in config.model:
    from vit_jax.models import gelu  # pylint: disable=g-import-not-at-top
    _one_of('model.mlp_activation', config.model.mlp_activation,
            tuple(gelu.ACTIVATIONS))
  _one_of('optim.name', config.optim.name, optim.OPTIMIZERS)
  _one_of('optim.schedule', config.optim.schedule, optim.SCHEDULES)
  _one_of('optim.momentum_dtype', config.optim.momentum_dtype,
          tuple(optim.MOMENTUM_DTYPES))
  _one_of('partition_rules', config.partition_rules, tuple(sharding.RULES))
  for key in ('batch_size', 'eval_batch_size', 'total_steps', 'accum_steps',
              'image_size', 'log_every'):
    if config[key] <= 0:
      raise ValueError(f'config.{key}={config[key]} must be positive')
  for key in ('warmup_steps', 'eval_every', 'checkpoint_every',
              'keep_checkpoints'):
    if config[key] < 0:
      raise ValueError(f'config.{key}={config[key]} must be >= 0')
  if config.warmup_steps > config.total_steps:
    raise ValueError(f'config.warmup_steps={config.warmup_steps} exceeds '
                     f'config.total_steps={config.total_steps}')
  try:
    resolve_pp(config)
  except (KeyError, IndexError) as e:
    raise ValueError(f'config.data.pp_*: unknown placeholder {e}; allowed: '
                     '{image_size}, {resize_size}') from None
  if config.batch_size % config.accum_steps:
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible '
                     f'by config.accum_steps={config.accum_steps}')
  validate_perf(config)
  if num_devices is not None:
    sizes = sharding.mesh_shape(config.mesh, num_devices)
    split = sizes['data'] * sizes['fsdp']
    micro = config.batch_size // config.accum_steps
    if micro % split:
      raise ValueError(
          f'config.batch_size={config.batch_size} (per micro-batch {micro}) '
          f'is not divisible by the {split} devices of the batch axes '
          f'(config.mesh data x fsdp = {sizes["data"]} x {sizes["fsdp"]}, '
          f'{num_devices} devices)')
    if config.eval_batch_size % split:
      raise ValueError(
          f'config.eval_batch_size={config.eval_batch_size} is not divisible '
          f'by the {split} devices of the batch axes')
