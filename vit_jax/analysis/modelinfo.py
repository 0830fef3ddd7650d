"""What the analyses need to know about a model, and loading one.

    model, params = modelinfo.load('Ti/16', 'ViT-Ti_16.npz', (224, 224))
    modelinfo.num_layers(model)   # 12
    modelinfo.num_prefix(model)   # 1 (the class token) or 0
    modelinfo.truncate(model, 3)  # the same model with blocks 0..3 only

Works for every model of the registry that has blocks (ViT, hybrids,
conv-stem ViT, Mixer); `kind` says which. A scanned model
(`scan_layers=True`, e.g. from a workdir's config) is returned by `build` and
`load` in its unrolled form, with per-block parameters
(`vit_jax.models.scan.unrolled`): the same function, and the analyses read
`encoderblock_{i}` paths.
"""

import json
import os
from typing import Optional, Sequence

from vit_jax import models
from vit_jax.checkpoints import pretrained
from vit_jax.analysis import validate
from vit_jax.models import mixer
from vit_jax.models import resnet
from vit_jax.models import scan
from vit_jax.models import vit



def kind(model) -> str:
  """'vit', 'mixer' or 'resnet'."""
  if isinstance(model, vit.VisionTransformer):
    return 'vit'
  if isinstance(model, mixer.MlpMixer):
    return 'mixer'
  if isinstance(model, resnet.ResNet):
    return 'resnet'
  raise validate.AnalysisError(f'unsupported model type {type(model)}')


def num_layers(model) -> int:
  """Number of transformer / mixer blocks (0 for a ResNet)."""
  k = kind(model)
  return {'vit': lambda: model.num_layers, 'mixer': lambda: model.num_blocks,
          'resnet': lambda: 0}[k]()


def num_prefix(model) -> int:
  """Tokens before the patch tokens: 1 with a class token, else 0."""
  if kind(model) == 'vit' and model.classifier in ('token', 'token_unpooled'):
    return 1
  return 0


def describe(model) -> str:
  """E.g. 'vit with 12 blocks'."""
  return f'{kind(model)} with {num_layers(model)} blocks'


def check_layer(model, layer: int) -> int:
  """A valid block index (negative counts from the end) or a one-line error."""
  if kind(model) == 'resnet':
    raise validate.AnalysisError('this analysis needs a transformer or mixer; '
                                 'the model is a ResNet (no blocks)')
  return validate.index('layer', layer, num_layers(model), describe(model))


def truncate(model, layer: int):
  """The model with blocks 0..layer only (params of the full model still fit:
  unused ones are ignored). Used to skip work above a feature's layer."""
  layer = check_layer(model, layer)
  if scan.is_scanned(model):  # its last block is named by the block count
    raise validate.AnalysisError(
        'truncate needs the unrolled form of a scanned model (build and '
        'load return it; vit_jax.models.scan.unrolled)')
  if kind(model) == 'vit':
    return model.clone(num_layers=layer + 1)
  return model.clone(num_blocks=layer + 1)


def patch_size(model) -> tuple[int, int]:
  """Pixels per token (total stride), (height, width)."""
  if kind(model) == 'resnet':
    return (32, 32)
  return tuple(model.total_stride())


def read_workdir_name(path: str) -> str:
  """The model name recorded in a workdir's config.json."""
  with open(os.path.join(path, 'config.json')) as f:
    return json.load(f)['model_name']


def run_hooks(name: str) -> dict:
  """The computation hooks of the default `config.perf` on this machine
  (`vit_jax.perf.hooks.model_overrides`), for models that are run."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.perf import hooks  # pylint: disable=g-import-not-at-top
  return hooks.model_overrides({}, jax.default_backend(), jax.device_count(),
                               name)


def build(name: Optional[str], path: Optional[str] = None, **overrides):
  """The model alone (no parameters; head width left at its default).

  Cheap: for checking a request (layer, feature index) before the weights
  are read and initialized. `name` and `path` as in `load`.
  """
  if path is not None and os.path.isdir(path):
    cfg_path = os.path.join(path, 'config.json')
    if not os.path.isfile(cfg_path):
      raise validate.AnalysisError(f'{path} is a directory without '
                                   'config.json; expected a vit_jax.main '
                                   'workdir')
    with open(cfg_path) as f:
      cfg = json.load(f)
    name = name or cfg['model_name']
    overrides = {**(cfg.get('model') or {}), **overrides}
  if name is None:
    raise validate.AnalysisError('no model name given (and no workdir)')
  try:
    return scan.unrolled(models.get_model(name, **overrides))
  except ValueError as e:
    raise validate.AnalysisError(str(e)) from e


def load(name: Optional[str], path: Optional[str], image_size: Sequence[int],
         num_classes: Optional[int] = None, seed: int = 0, **overrides):
  """`vit_jax.checkpoints.pretrained.load_model`, with its errors as AnalysisError.

  Args:
    name: registry name, e.g. 'Ti/16', 'BiT-R26'; None with a workdir
      `path` takes the workdir's model.
    path: an official-layout `.npz`, or a `vit_jax.main` workdir; None keeps
      the random init.
    image_size: (height, width) the model will see; position embeddings
      are resampled to it.
    num_classes: head width; default: the checkpoint's (1000 without one).
    overrides: model constructor overrides (added to a workdir's).

  Returns:
    (model, params), a scanned model unrolled (module doc).
  """
  if (path is not None and '://' not in path and not os.path.isfile(path)
      and not os.path.isdir(path)):
    raise validate.AnalysisError(f'no such checkpoint file or workdir: {path}')
  if name is None and path is not None and os.path.isdir(path):
    name = read_workdir_name(path)
  try:
    if name is not None:  # the computation hooks for this machine
      overrides = {**run_hooks(name), **overrides}
    return scan.unrolled(*pretrained.load_model(
        name, path, image_size, num_classes, seed, **overrides))
  except ValueError as e:
    raise validate.AnalysisError(str(e)) from e
