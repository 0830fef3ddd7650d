"""Running a model and collecting its per-layer intermediates.

    logits, inter = intermediates.apply(model, params, images)
    inter['attention']   # list over blocks of [B, heads, N, N]
    inter['tokens']      # list over blocks of [B, N, D]
    inter['mlp_hidden']  # list over blocks of [B, N, mlp_dim]
    inter['pre_logits']  # [B, D'] (ViT only)

Lists are in block order. The model itself is unchanged: the modules record
these values with `sow` only when the 'intermediates' collection is mutable.
A scanned model (`scan_layers=True`) runs its blocks one by one while
recording (`vit_jax.models.scan.BlockStack`), on views of its stacked
parameters: the values, shapes and lists are those of the unrolled model;
the raw paths read `.../encoderblock/encoderblock_{i}/...`.
"""

import re
from typing import Any

import flax
import jax

_BLOCK = re.compile(r'(?:encoderblock|MixerBlock)_(\d+)$')


def collect(state: Any) -> dict[str, Any]:
  """Turns the 'intermediates' collection into {name: value or [per block]}."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state))
  per_block: dict[str, dict[int, Any]] = {}
  out: dict[str, Any] = {}
  for path, value in flat.items():
    name = path[-1]
    value = value[0] if isinstance(value, tuple) else value  # sow -> tuple
    block = next((int(m.group(1)) for p in path
                  if (m := _BLOCK.match(p))), None)
    if path == ('pooled',):  # ViT's input to the head
      out['pre_logits'] = value
    elif block is None:  # e.g. 'MAPHead_0/MultiHeadDotProductAttention_0/...'
      out['/'.join(path)] = value
    else:
      per_block.setdefault(name, {})[block] = value
  for name, d in per_block.items():
    out[name] = [d[i] for i in sorted(d)]
  return out


def apply(model, params, images, **kwargs) -> tuple[jax.Array, dict]:
  """Forward pass returning (output, intermediates as documented above)."""
  variables = params if 'params' in params else {'params': params}
  y, state = model.apply(variables, images, mutable=['intermediates'],
                         **kwargs)
  return y, collect(state.get('intermediates', {}))
