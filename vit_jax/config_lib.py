"""Config files (`configs/vit.py:b16,cifar10`), presets and validation.

`resolve_config_file('configs/cpu.py:digits')` finds the file a `--config`
names: the path as given (relative to the working directory), else the copy
of `configs/` this vit_jax came with (`CONFIGS_DIR`: the checkout's
`configs/` next to the `vit_jax/` package, or the installed `vit_jax/configs`
of `pip install .`), so README commands work from any directory.
`use_configs_package(path)` makes `configs` (which the config files import:
`from configs import common`) the package of the folder that file is in;
`import_config('common')` imports one of CONFIGS_DIR's modules.

`parse_arg('b16,cifar10,res=128', models=..., datasets=...)` splits the string
after ':' into a model preset, a dataset preset and `key=value` overrides.
`validate(config, num_devices)` checks a config before anything expensive
happens; every error is one line naming the key and the allowed values.
"""

import dataclasses
import importlib.util
import os
import pathlib
import re
import sys
from typing import Any, Mapping, Optional

import ml_collections

TRAINERS = ('train', 'evaluate', 'inference_time')
DTYPES = ('float32', 'bfloat16')
# Model options a preset keeps from the defaults (configs/common.py).
KEPT_MODEL_KEYS = ('mlp_activation', 'scan_layers', 'remat_policy')
# key=value shorthands accepted in the config argument.
SHORTHANDS = {'res': 'image_size', 'steps': 'total_steps',
              'batch': 'batch_size', 'lr': 'optim.base_lr'}
# Patch sizes (the total stride of a hybrid's stem) of the released
# checkpoints: ViT-B/8, ViT-H/14, */16, */32; and of the presets of
# configs/common.py trained here from scratch (mu/4, Ti/4 `vit_c4`). Any
# other size is refused unless config.allow_custom_model is set.
RELEASED_PATCH_SIZES = (8, 14, 16, 32)
PRESET_PATCH_SIZES = (4,)
ALLOW_CUSTOM_KEY = 'allow_custom_model'
_PATCH_RE = re.compile(r'[_/](\d+)(?:-gap-norep|-gap|-map)?$')

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def _configs_dir() -> pathlib.Path:
  installed = _PACKAGE_DIR / 'configs'     # pip install . (package data)
  if (installed / 'common.py').is_file():
    return installed
  return _PACKAGE_DIR.parent / 'configs'   # a checkout, pip install -e .


# The configs/ folder this vit_jax came with.
CONFIGS_DIR = _configs_dir()


def config_files() -> list[str]:
  """The config files of CONFIGS_DIR, as `configs/NAME.py`."""
  return sorted(f'configs/{p.name}' for p in CONFIGS_DIR.glob('*.py')
                if not p.name.startswith('_') and p.name != 'common.py')


def resolve_config_file(spec: str) -> str:
  """`PATH[:ARG]` with PATH replaced by the file it names.

  PATH as given when it exists (relative to the working directory); else a
  relative `configs/X.py` is looked up in CONFIGS_DIR.

  Raises:
    ValueError (one line) naming the paths tried and the available files.
  """
  path, sep, arg = spec.partition(':')
  if os.path.isfile(path):
    return spec
  parts = pathlib.PurePath(path).parts
  tried = [os.path.abspath(path)]
  if len(parts) >= 2 and parts[0] == 'configs':
    candidate = CONFIGS_DIR.joinpath(*parts[1:])
    if candidate.is_file():
      return f'{candidate}{sep}{arg}'
    if str(candidate) not in tried:
      tried.append(str(candidate))
  raise ValueError(f'--config={spec}: no such config file '
                   f'({" nor ".join(tried)}); available: '
                   f'{", ".join(config_files())}')


def use_configs_package(config_file: str) -> None:
  """Makes `import configs` give the package of the folder holding
  `config_file` (when that folder is a package named `configs`), so a config
  file imports its own siblings, `from configs import common`, wherever it
  lies: in a checkout, or installed as `vit_jax/configs`."""
  folder = pathlib.Path(config_file).resolve().parent
  if folder.name != 'configs' or not (folder / '__init__.py').is_file():
    return
  try:
    spec = importlib.util.find_spec('configs')
  except (ImportError, ValueError):
    spec = None
  locations = (spec.submodule_search_locations or []) if spec else []
  if any(pathlib.Path(p).resolve() == folder for p in locations):
    return
  for name in [m for m in sys.modules if m == 'configs' or
               m.startswith('configs.')]:
    del sys.modules[name]  # another folder's `configs`
  spec = importlib.util.spec_from_file_location(
      'configs', folder / '__init__.py',
      submodule_search_locations=[str(folder)])
  module = importlib.util.module_from_spec(spec)
  sys.modules['configs'] = module
  spec.loader.exec_module(module)


def import_config(name: str):
  """`configs.<name>` of CONFIGS_DIR (e.g. 'common', for its presets)."""
  use_configs_package(str(CONFIGS_DIR / f'{name}.py'))
  return importlib.import_module(f'configs.{name}')


def load_config_module(config_file: str):
  """The module of a config file (its siblings importable as `configs.X`)."""
  use_configs_package(config_file)
  spec = importlib.util.spec_from_file_location(
      '_vit_jax_config_' + pathlib.Path(config_file).stem, config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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


def patch_size(model_name: str) -> Optional[int]:
  """The patch size a registry name asks for (`B/16` -> 16, `R26+S/32` ->
  32, the stride of the hybrid's stem), None for names without one
  (`BiT-R50`)."""
  m = _PATCH_RE.search(model_name)
  return int(m.group(1)) if m else None


def check_patch_size(model_name: str, allow_custom: bool = False) -> None:
  """Refuses (one-line ValueError) a patch size that no released checkpoint
  or preset uses (`B/17` is a typo more often than an experiment), unless
  `allow_custom`."""
  p = patch_size(model_name)
  if allow_custom or p is None or p in (RELEASED_PATCH_SIZES +
                                        PRESET_PATCH_SIZES):
    return
  raise ValueError(
      f'config.model_name={model_name!r}: patch size {p} is none of the '
      f'released ({", ".join(map(str, RELEASED_PATCH_SIZES))}) or preset '
      f'({", ".join(map(str, PRESET_PATCH_SIZES))}) sizes; set '
      f'--config.{ALLOW_CUSTOM_KEY}=True to train it anyway')


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
  check_patch_size(config.model_name, config.get(ALLOW_CUSTOM_KEY, False))
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
  if 'scan_layers' in config.model and not isinstance(
      config.model.scan_layers, bool):
    raise ValueError(f'config.model.scan_layers='
                     f'{config.model.scan_layers!r} must be True or False')
  if 'remat_policy' in config.model:
    from vit_jax.models import scan  # pylint: disable=g-import-not-at-top
    _one_of('model.remat_policy', config.model.remat_policy,
            scan.REMAT_POLICIES)
    try:
      scan.remat_policy(config.model.remat_policy,
                        bool(config.model.get('remat', False)))
    except ValueError as e:
      raise ValueError(f'config.model: {e}') from None
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
