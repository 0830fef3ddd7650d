"""Pretrained weights: the one path from a file to a model's parameters.

Training (`config.pretrained_path`), `predict`, `trainer='evaluate'` and the
analyses all load through here:

    restored = pretrained.read('ViT-Ti_16.npz')       # or a workdir
    params = pretrained.fit(model, init_params, restored, (384, 384))
    model, params = pretrained.load_model('Ti/16', 'ViT-Ti_16.npz', (224, 224))

Sources: an official-layout `.npz` (`vit_jax.checkpoints.npz.read_npz`: the
released pre-Linen naming or the Linen naming, local or `gs://`), or a
`vit_jax.main` workdir / its `checkpoints/` / one `checkpoints/<step>/` (the
params of its Orbax checkpoint; the workdir's `config.json` names the model).

Adaptation to the target model (`vit_jax.checkpoints.npz.merge`): position
embeddings resampled to the model's token grid at `image_size`, the head
re-initialized when the number of classes differs, `pre_logits` dropped when
the model has none; anything else that differs, and NaN or Inf in the
weights, is a `PretrainedError` whose one-line message names the key.
Block layouts are converted too: a per-block file (every `.npz`) is
stacked for a scanned model (`scan_layers=True`), and a scanned workdir's
stacked params are unstacked for an unrolled one (`vit_jax.models.scan`).
"""

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.checkpoints import npz
from vit_jax import models

PyTree = Any


class PretrainedError(ValueError):
  """The weights cannot be read or do not fit; the message says why."""


@dataclasses.dataclass
class Restored:
  """Parameters read from a file, and where they came from.

  Attributes:
    params: nested dict of host arrays.
    source: the path read.
    kind: 'npz' or 'workdir'.
    naming: the `.npz` key naming that was read ('pre-linen', as released,
      or 'linen'); None for a workdir.
    model_name, model_overrides: the model a workdir's `config.json`
      records (None / {} for an `.npz`).
  """
  params: PyTree
  source: str
  kind: str
  naming: Optional[str] = None
  model_name: Optional[str] = None
  model_overrides: dict = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> Optional[int]:
    """Width of the checkpoint's head, or None if it has none."""
    head = self.params.get('head')
    return None if head is None else int(np.shape(head['kernel'])[-1])

  def describe(self) -> str:
    """E.g. 'ViT-Ti_16.npz (npz, released naming, 5,717,416 parameters)'."""
    n = sum(int(np.size(v)) for v in npz.flatten(self.params).values())
    what = self.kind if self.naming is None else (
        f'{self.kind}, {self.naming} naming')
    return f'{self.source} ({what}, {n:,} parameters)'


def _is_workdir(path: str) -> bool:
  return '://' not in path and os.path.isdir(path)


def _workdir_config(path: str) -> dict:
  """config.json of the workdir holding `path` (a workdir, its checkpoints/
  or one step dir), or {} when there is none."""
  p = os.path.abspath(path)
  for _ in range(3):
    cfg = os.path.join(p, 'config.json')
    if os.path.isfile(cfg):
      with open(cfg) as f:
        return json.load(f)
    p = os.path.dirname(p)
  return {}


def check_finite(params: PyTree, source: str) -> None:
  """PretrainedError naming the first key (sorted) holding a NaN or Inf."""
  for k, v in sorted(npz.flatten(params).items()):
    v = np.asarray(v)
    if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
      bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
      raise PretrainedError(f'{source}: {k} holds {bad} NaN/Inf value(s) of '
                            f'{np.size(v)}; refusing to load it')


def read(path: str) -> Restored:
  """Reads an `.npz` or a workdir's latest params (module doc)."""
  if _is_workdir(path):
    from vit_jax.checkpoints import train_state  # pylint: disable=g-import-not-at-top
    try:
      params = train_state.load_params(path)
    except (FileNotFoundError, ValueError) as e:
      raise PretrainedError(f'{path}: {e}') from e
    cfg = _workdir_config(path)
    restored = Restored(params, path, 'workdir',
                        model_name=cfg.get('model_name'),
                        model_overrides=dict(cfg.get('model') or {}))
  else:
    try:
      flat, naming = npz.read_npz_with_naming(path)
    except npz.CheckpointError as e:
      raise PretrainedError(str(e)) from e
    restored = Restored(npz.unflatten(flat), path, 'npz',
                        naming=naming)
  check_finite(restored.params, path)
  return restored


def fit(model, init_params: PyTree, restored: Restored,
        image_size: Optional[Sequence[int]] = None) -> PyTree:
  """`restored` fitted to the shapes of `init_params` (`npz.merge`).

  Args:
    model: the target model; with `image_size` it gives the token grid the
      position embeddings are resampled to (needed for non-square grids).
    init_params: the target model's freshly initialized parameters (a
      re-initialized head takes its values from here).
    restored: from `read`.
    image_size: (height, width) the model will run at.
  """
  grid = None
  if image_size is not None and hasattr(model, 'patch_grid'):
    grid = model.patch_grid(tuple(image_size))
  try:
    return npz.merge(init_params, restored.params, grid=grid)
  except npz.CheckpointError as e:
    raise PretrainedError(f'{restored.source}: {e}') from e


def load_model(name: Optional[str], path: 'str | Restored | None',
               image_size: Sequence[int], num_classes: Optional[int] = None,
               seed: int = 0, **overrides) -> tuple[Any, PyTree]:
  """Builds a registry model and loads `path` into it.

  Args:
    name: registry name ('Ti/16', 'R26+S/32', ...); None takes the model a
      workdir's config.json records.
    path: an `.npz` or a workdir (or what `read` returned for one); None
      keeps the random init.
    image_size: (height, width) the model will run at.
    num_classes: head width; default: the checkpoint's head (1000 without
      a checkpoint or a head).
    seed: of the initialization (the parts not loaded).
    overrides: model constructor options, added to a workdir's.

  Returns:
    (model, params) with params as device arrays.
  """
  restored = read(path) if isinstance(path, str) else path
  if restored is not None and restored.kind == 'workdir':
    name = name or restored.model_name
    overrides = {**restored.model_overrides, **overrides}
  if name is None:
    raise PretrainedError('no model name given (and no workdir config.json '
                          'naming one)')
  if num_classes is None:
    num_classes = (restored and restored.num_classes) or 1000
  try:
    model = models.get_model(name, num_classes=num_classes, **overrides)
  except ValueError as e:
    raise PretrainedError(str(e)) from e
  h, w = image_size
  init = jax.jit(lambda k: model.init(k, jnp.zeros((1, h, w, 3)))['params'])
  params = init(jax.random.key(seed))
  if restored is not None:
    params = jax.tree.map(jnp.asarray, fit(model, params, restored, (h, w)))
  return model, params
