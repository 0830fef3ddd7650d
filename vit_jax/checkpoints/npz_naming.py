"""Parameter naming of `.npz` checkpoints: released (pre-Linen) or Linen.

The released ViT checkpoints of google-research/vision_transformer were
written with flax's pre-Linen module API, in which the automatically named
submodules of a module share one counter. An encoder block therefore holds

    released (pre-Linen)              Linen (one counter per class)
    LayerNorm_0                       LayerNorm_0
    MultiHeadDotProductAttention_1    MultiHeadDotProductAttention_0
    LayerNorm_2                       LayerNorm_1
    MlpBlock_3                        MlpBlock_0

while the same repository's Linen models, and any file written from their
parameter tree, use the right-hand names. Our models use the left-hand ones.

Nothing else differs. Every other module either has an explicit name or is
the only one of its class in its parent, and keeps its name in both:
  ViT:     `embedding`, `cls`, `Transformer/posembed_input`,
           `Transformer/encoder_norm`, `pre_logits`, `head`; inside a block the
           MLP's `Dense_0`, `Dense_1` and attention's `query`, `key`, `value`,
           `out`;
  hybrid and ResNet stems: `conv_root`, `gn_root`,
           `block{s}/unit{u}/{conv1,conv2,conv3,conv_proj,gn1,gn2,gn3,gn_proj}`;
  Mixer:   `stem`, `MixerBlock_{i}/{LayerNorm_0, token_mixing, LayerNorm_1,
           channel_mixing}`, `pre_head_layer_norm`, `head` (Mixer
           checkpoints were only ever written by Linen code);
  MAP head: `MAPHead_0/{MultiHeadDotProductAttention_0, LayerNorm_0,
           MlpBlock_0}` (big_vision's Linen names, which ours are).
A checkpoint without encoder blocks (Mixer, ResNet) thus reads the same under
both namings; it is reported as 'pre-linen' and returned unchanged.
"""

import re
from typing import Mapping

import numpy as np

PRE_LINEN = 'pre-linen'
LINEN = 'linen'

# Linen name -> released name of an encoder block's submodules.
LINEN_TO_RELEASED = {
    'LayerNorm_0': 'LayerNorm_0',
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2',
    'MlpBlock_0': 'MlpBlock_3',
}
_RELEASED_BLOCK = frozenset(LINEN_TO_RELEASED.values())
_LINEN_BLOCK = frozenset(LINEN_TO_RELEASED)
_BLOCK = re.compile(r'encoderblock_\d+')


def _natural(s: str) -> list:
  """Sort key putting encoderblock_2 before encoderblock_10."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', s)]


def _block_children(keys) -> dict[str, set[str]]:
  """'.../encoderblock_{i}' -> names of its direct children."""
  blocks: dict[str, set[str]] = {}
  for key in keys:
    parts = key.split('/')
    for i, part in enumerate(parts[:-1]):
      if part == 'encoderblock':
        raise ValueError(
            f'{key}: one stacked `encoderblock` for all layers (a scanned '
            'model) is neither the released nor the Linen layout')
      if _BLOCK.fullmatch(part):
        blocks.setdefault('/'.join(parts[:i + 1]), set()).add(parts[i + 1])
  return blocks


def to_released_naming(
    flat: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
  """Renames a flat checkpoint {'a/b/kernel': array} to the released naming.

  Args:
    flat: '/'-joined keys to arrays, in either naming (see the module doc),
      for any model family (ViT, hybrid, Mixer, ResNet).

  Returns:
    (the same arrays under released (pre-Linen) keys, the naming found:
    'pre-linen' or 'linen'). A file without encoder blocks reads the same
    under both and comes back unchanged as 'pre-linen'.

  Raises:
    ValueError (one line) for an empty dict, for an encoder block whose
    submodules are neither naming's four, for blocks in different namings,
    and for stacked (scanned) encoder blocks.
  """
  if not flat:
    raise ValueError('the checkpoint holds no arrays: no naming to tell')
  kinds = {}
  for block, children in _block_children(flat).items():
    if children == _RELEASED_BLOCK:
      kinds[block] = PRE_LINEN
    elif children == _LINEN_BLOCK:
      kinds[block] = LINEN
    else:
      raise ValueError(
          f'{block}: submodules {sorted(children)} are neither the released '
          f'(pre-Linen) naming {sorted(_RELEASED_BLOCK)} nor the Linen '
          f'naming {sorted(_LINEN_BLOCK)}')
  if len(set(kinds.values())) > 1:
    of = lambda kind: ', '.join(sorted(
        (b for b, k in kinds.items() if k == kind), key=_natural))
    raise ValueError(f'mixed naming: {of(PRE_LINEN)} in the released '
                     f'(pre-Linen) naming but {of(LINEN)} in the Linen naming')
  if LINEN not in kinds.values():
    return dict(flat), PRE_LINEN
  renamed = {}
  for key, value in flat.items():
    parts = key.split('/')
    for i, part in enumerate(parts[:-1]):
      if _BLOCK.fullmatch(part):
        parts[i + 1] = LINEN_TO_RELEASED[parts[i + 1]]
    renamed['/'.join(parts)] = value
  return renamed, LINEN
