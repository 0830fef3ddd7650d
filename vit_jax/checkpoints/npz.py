"""Official `.npz` checkpoints: read, write, inspect, load into a model.

The layout is google-research/vision_transformer's: one `np.savez` archive of
flat `/`-joined keys (`Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel`,
`embedding/kernel` HWIO, `cls`, `head/kernel`, ...). Our models use the same
names, so a parameter tree and a checkpoint map key for key.

Scanned models (`scan_layers=True`) keep their blocks stacked,
`Transformer/encoderblock/...` [L, ...] (`vit_jax.models.scan`); files keep
the per-block layout: `save_npz` unstacks, `merge` stacks a per-block
checkpoint for a scanned model (and unstacks a stacked tree for an unrolled
one). Row i of a stacked array is block i's array, bit for bit.

`merge` adapts a checkpoint to a model of another shape (the one loading
path that uses it is `vit_jax.checkpoints.pretrained`):
  * position embeddings are resampled on their 2-D grid (class token row kept
    aside), bilinearly with scipy as the official code does;
  * the head is re-initialized (to the model's init: zeros) when the number of
    classes differs, and `pre_logits` is dropped when the model has none;
  * anything else that differs is an error naming the key and both shapes;
    missing and unexpected keys are errors listing them.

CLI:  python -m vit_jax.checkpoints inspect FILE
"""

import io
import os
import re
import sys
import zipfile
from typing import Any, Optional, Sequence

import flax
import numpy as np
import scipy.ndimage

from vit_jax.checkpoints import npz_naming
from vit_jax.models import scan

PyTree = Any
POSEMB = 'Transformer/posembed_input/pos_embedding'


class CheckpointError(ValueError):
  """A checkpoint does not fit the model; the message says why."""


def flatten(params: PyTree) -> dict[str, np.ndarray]:
  """Nested dict -> {'a/b/c': array}."""
  params = flax.core.unfreeze(params)
  if 'params' in params and len(params) == 1:
    params = params['params']
  return {'/'.join(k): v for k, v in
          flax.traverse_util.flatten_dict(params).items()}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b/c': array} -> nested dict."""
  return flax.traverse_util.unflatten_dict(
      {tuple(k.split('/')): v for k, v in flat.items()})


def save_npz(path: str, params: PyTree) -> None:
  """Writes `params` in the official layout (atomically: tmp file + rename);
  stacked blocks of a scanned model are written per block."""
  flat = {k: np.asarray(v) for k, v in scan.unstack(flatten(params)).items()}
  tmp = f'{path}.tmp-{os.getpid()}.npz'
  with open(tmp, 'wb') as f:
    np.savez(f, **flat)
  os.replace(tmp, path)


def _fix_legacy(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Old hybrid files store GroupNorm scale/bias as [1, 1, 1, C]."""
  out = {}
  for k, v in flat.items():
    parent = k.split('/')[-2] if '/' in k else ''
    if parent.startswith('gn') and v.ndim == 4 and v.shape[:3] == (1, 1, 1):
      v = v.reshape(v.shape[-1])
    out[k] = v
  return out


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads an `.npz` checkpoint (local or `gs://`) into {key: array}, in
  the released naming whichever naming the file uses."""
  return read_npz_with_naming(path)[0]


def read_npz_with_naming(path: str) -> tuple[dict[str, np.ndarray], str]:
  """({key: array} in the released naming, the naming the file used:
  'pre-linen' (as released) or 'linen'; see `vit_jax.checkpoints.npz_naming`)."""
  if '://' in path:  # buckets: read through etils (gcsfs / tf.io.gfile)
    from etils import epath  # pylint: disable=g-import-not-at-top
    if not epath.Path(path).exists():
      raise CheckpointError(f'checkpoint not found: {path}')
    source = io.BytesIO(epath.Path(path).read_bytes())
  elif not os.path.exists(path):
    raise CheckpointError(f'checkpoint not found: {path}')
  else:
    source = path
  try:
    z = np.load(source, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
      raise ValueError('a single array, not an .npz archive of named arrays')
    with z:
      flat = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile,
          zipfile.LargeZipFile) as e:
    why = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointError(f'{path} is not a readable .npz file ({why}); '
                          'truncated or not a checkpoint?') from e
  if not flat:
    raise CheckpointError(f'{path} holds no arrays')
  for prefix in ('opt/target/', 'params/'):  # optimizer-state dumps
    if all(k.startswith(prefix) for k in flat):
      flat = {k[len(prefix):]: v for k, v in flat.items()}
  try:
    return npz_naming.to_released_naming(_fix_legacy(flat))
  except ValueError as e:
    raise CheckpointError(f'{path}: {e}') from e



def load_npz(path: str) -> PyTree:
  """Reads an `.npz` checkpoint into a nested parameter dict."""
  return unflatten(read_npz(path))


def _square_grid(n: int, what: str) -> tuple[int, int]:
  s = int(round(np.sqrt(n)))
  if s * s != n:
    raise CheckpointError(
        f'{what}: {n} position embeddings do not form a square grid; pass '
        'the grid size explicitly')
  return (s, s)


def resample_posemb(posemb: np.ndarray, new_grid: Sequence[int],
                    num_prefix: int,
                    old_grid: Optional[Sequence[int]] = None) -> np.ndarray:
  """Resamples position embeddings [1, prefix + h*w, D] to a new grid.

  Prefix rows (the class token's) are kept as they are; the grid rows are
  reshaped to [h, w, D] and zoomed with `scipy.ndimage.zoom(order=1)` (linear,
  corner-aligned: the official `interpolate_posembed`), then flattened back.

  Args:
    posemb: [1, num_prefix + h_old * w_old, D].
    new_grid: (h_new, w_new).
    num_prefix: leading rows that are not on the grid (1 for a class token).
    old_grid: (h_old, w_old); inferred as square when omitted.

  Returns:
    [1, num_prefix + h_new * w_new, D].
  """
  prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
  old_grid = tuple(old_grid or _square_grid(len(grid), POSEMB))
  if old_grid[0] * old_grid[1] != len(grid):
    raise CheckpointError(f'{POSEMB}: {len(grid)} rows do not form a '
                          f'{old_grid[0]}x{old_grid[1]} grid')
  grid = grid.reshape(*old_grid, -1)
  zoom = (new_grid[0] / old_grid[0], new_grid[1] / old_grid[1], 1)
  grid = scipy.ndimage.zoom(grid, zoom, order=1)
  assert grid.shape[:2] == tuple(new_grid), (grid.shape, new_grid)
  grid = grid.reshape(1, new_grid[0] * new_grid[1], -1)
  return np.concatenate([prefix, grid.astype(posemb.dtype)], axis=1)


def merge(init_params: PyTree, restored: PyTree, *,
          grid: Optional[Sequence[int]] = None,
          old_grid: Optional[Sequence[int]] = None) -> PyTree:
  """Fits `restored` (a checkpoint's tree) to the shapes of `init_params`.

  Args:
    init_params: freshly initialized parameters of the target model (their
      values are used for a re-initialized head).
    restored: parameters read from a checkpoint.
    grid: the target model's token grid (h, w); inferred when square.
    old_grid: the checkpoint's grid (h, w); inferred when square.

  Returns:
    A tree with the structure, shapes and dtypes of `init_params`.

  Raises:
    CheckpointError naming missing/unexpected keys or the key and both shapes
    of a mismatch that cannot be adapted.
  """
  init = flatten(init_params)
  file_architecture = describe_architecture(flatten(restored))
  try:  # the model's layout: blocks stacked (scanned) or per block
    ckpt = scan.to_layout(flatten(restored), init)
  except ValueError as e:
    raise CheckpointError(str(e)) from e
  dropped = []
  if not any(k.startswith('pre_logits/') for k in init):
    dropped = [k for k in ckpt if k.startswith('pre_logits/')]
  head_mismatch = any(
      k.startswith('head/') and k in ckpt and ckpt[k].shape != init[k].shape
      for k in init)
  if head_mismatch or not any(k.startswith('head/') for k in init):
    dropped += [k for k in ckpt if k.startswith('head/')]
  for k in dropped:
    del ckpt[k]

  missing = sorted(k for k in set(init) - set(ckpt)
                   if not (head_mismatch and k.startswith('head/')))
  unexpected = sorted(set(ckpt) - set(init))
  if missing or unexpected:
    msg = []
    if missing:
      msg.append(f'missing in checkpoint: {", ".join(missing)}')
    if unexpected:
      msg.append(f'unexpected in checkpoint: {", ".join(unexpected)}')
    raise CheckpointError('; '.join(msg))

  out, mismatches = {}, []
  for k, v_init in init.items():
    if k not in ckpt:  # re-initialized head
      out[k] = v_init
      continue
    v = np.asarray(ckpt[k])
    if v.shape != v_init.shape and k.endswith('posembed_input/pos_embedding'):
      num_prefix = 1 if 'cls' in init else 0
      new_grid = grid or _square_grid(v_init.shape[1] - num_prefix, k)
      v = resample_posemb(v, new_grid, num_prefix, old_grid)
    if v.shape != v_init.shape:
      mismatches.append(f'{k}: checkpoint has shape {v.shape}, the model '
                        f'expects {tuple(v_init.shape)}')
    out[k] = v.astype(v_init.dtype)
  if mismatches:
    shown = '; '.join(mismatches[:MAX_LISTED])
    more = len(mismatches) - MAX_LISTED
    raise CheckpointError(
        f'{len(mismatches)} of {len(init)} arrays do not fit (the file: '
        f'{file_architecture}; the model: '
        f'{describe_architecture(init)}): {shown}'
        + (f'; and {more} more' if more > 0 else ''))
  return unflatten(out)


# How many mismatching keys an error lists before saying how many more.
MAX_LISTED = 3


def describe_architecture(flat: dict[str, Any]) -> str:
  """What a flat parameter dict says about its model, e.g. 'width 192,
  12 blocks, patch 16x16, head 1000'; for the mismatch errors."""
  parts = []
  width = next((np.shape(flat[k])[-1] for k in
                ('cls', 'embedding/bias', 'stem/bias', 'encoder_norm/bias')
                if k in flat), None)
  if width is None:
    width = next((np.shape(v)[-1] for k, v in flat.items()
                  if k.endswith('encoder_norm/bias')), None)
  if width is not None:
    parts.append(f'width {width}')
  blocks = {m.group(0) for k in flat
            for m in [re.search(r'(encoderblock|MixerBlock)_\d+', k)] if m}
  n_blocks = len(blocks) + sum(scan.stacks(flat).values())  # + stacked
  if n_blocks:
    parts.append(f'{n_blocks} blocks')
  for k in ('embedding/kernel', 'stem/kernel'):
    if k in flat and len(np.shape(flat[k])) == 4:
      ph, pw = np.shape(flat[k])[:2]
      parts.append(f'patch {ph}x{pw}')
      break
  if 'head/kernel' in flat:
    parts.append(f'head {np.shape(flat["head/kernel"])[-1]}')
  return ', '.join(parts) or 'no recognizable layout'


def inspect(path: str, out=sys.stdout) -> None:
  """Prints every array (key, shape, dtype) and the parameter count."""
  flat = read_npz(path)
  width = max(len(k) for k in flat)
  total = 0
  for k in sorted(flat):
    v = flat[k]
    total += v.size
    print(f'{k:<{width}}  {str(v.shape):<22} {v.dtype}', file=out)
  print(f'{len(flat)} arrays, {total:,} parameters', file=out)
