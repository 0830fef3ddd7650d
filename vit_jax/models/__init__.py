"""Model registry: official and AugReg names -> Flax modules.

    model = models.get_model('ViT-B_16', num_classes=10)
    model = models.get_model('R26+S/32')          # AugReg naming
    model = models.get_model('Mixer-B_16', num_classes=0)

Names understood (sizes mu | Ti | S | B | L | H | So400m | g | G | e, any
patch size; `vit.VARIANTS`):
  ViT:     `ViT-B_16`, `B/16`, `ViT-S_16-gap-norep` (gap, no pre-logits),
           `g/14`, `ViT-G_14`, `e/14`, `So400m/14`, `So400m/14-map`
  hybrid:  `R50+ViT-B_16`, `R50+B/16`, `R26+ViT-S_32`, `R26+S/32`,
           `R50+ViT-L_32`, `R+ViT-Ti_16`, `R_Ti/16` (stage-less root)
  conv-stem ViT (Xiao et al. 2021): `ViTC-B_16`, `C+B/16`
  Mixer:   `Mixer-B_16`, `Mixer-B/16`
  ResNetV2 classifier: `BiT-R50`, `BiT-R26`, `BiT-R8` (CNN baseline)

Keyword overrides (`num_classes`, `classifier`, `dtype`, ...) are passed to the
module constructor; unknown ones raise.
"""

import dataclasses
import re
from typing import Any

import flax.linen as nn

from vit_jax.models import mixer
from vit_jax.models import resnet
from vit_jax.models import vit

# Hybrid stems: total stride -> (units per stage, embedding patch size).
# R50 uses 3 stages (stride 16) for /16 and 4 stages (stride 32) for /32.
_HYBRID_STEMS = {
    ('R', 16): ((), 8),  # R+Ti/16: the root alone (stride 4), 8x8 patches
    ('R26', 32): ((2, 2, 2, 2), 1),
    ('R50', 16): ((3, 4, 9), 1),
    ('R50', 32): ((3, 4, 6, 3), 1),
}

_SIZE = r'(mu|Ti|So400m|S|B|L|H|g|G|e)'
_VIT_RE = re.compile(
    r'^(?:(?P<stem>R\d*|C)[+_])?(?:ViT(?P<c>C)?-)?' + _SIZE +
    r'[_/](?P<patch>\d+)(?P<suffix>-gap-norep|-gap|-map)?$')
_MIXER_RE = re.compile(r'^Mixer-(mu|S|B|L)[_/](\d+)$')
_RESNET_RE = re.compile(r'^BiT-(R\d+)$')


def _vit_kwargs(name: str) -> dict[str, Any]:
  m = _VIT_RE.match(name)
  size, patch = m.group(3), int(m.group('patch'))
  kw = dict(vit.VARIANTS[size], patch_size=(patch, patch))
  stem = m.group('stem')
  if stem == 'C' or m.group('c'):
    # Xiao et al.: log2(patch) stride-2 convs, doubling from 64 (or D/8)
    n = patch.bit_length() - 1
    if 2 ** n != patch:
      raise ValueError(f'{name}: conv-stem patch size must be a power of 2')
    base = max(kw['hidden_size'] // 8 // 2 ** (n - 1), 16)
    kw.update(conv_stem=tuple(base * 2 ** i for i in range(n)),
              patch_size=(1, 1))
  elif stem is not None:
    key = (stem, patch)
    if key not in _HYBRID_STEMS:
      allowed = ', '.join(f'{s}+{p}' for s, p in _HYBRID_STEMS)
      raise ValueError(f'{name}: no hybrid stem {stem} for /{patch}; '
                       f'known: {allowed}')
    layers, p = _HYBRID_STEMS[key]
    kw.update(resnet_layers=layers, patch_size=(p, p))
  suffix = m.group('suffix')
  if suffix in ('-gap-norep', '-gap'):
    kw['classifier'] = 'gap'
  elif suffix == '-map':
    kw['classifier'] = 'map'
  return kw


def model_kwargs(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
  """(module class, constructor kwargs) for a registered model name."""
  if _VIT_RE.match(name):
    return vit.VisionTransformer, _vit_kwargs(name)
  if m := _MIXER_RE.match(name):
    p = int(m.group(2))
    return mixer.MlpMixer, dict(mixer.VARIANTS[m.group(1)],
                                patch_size=(p, p))
  if (m := _RESNET_RE.match(name)) and m.group(1) in resnet.DEPTHS:
    return resnet.ResNet, dict(layers=resnet.DEPTHS[m.group(1)])
  raise ValueError(
      f'unknown model name {name!r}; examples of valid names: '
      + ', '.join(EXAMPLE_NAMES))


def get_model(name: str, **overrides) -> nn.Module:
  """Builds the named model; `overrides` replace constructor attributes."""
  cls, kw = model_kwargs(name)
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f'{name}: unknown model option(s) {sorted(unknown)}; '
                     f'allowed: {sorted(fields)}')
  kw.update(overrides)
  return cls(**kw)


# Names used in the official releases and the AugReg paper (for docs, tests).
EXAMPLE_NAMES = (
    'ViT-Ti_16', 'ViT-S_16', 'ViT-S_32', 'ViT-B_8', 'ViT-B_16', 'ViT-B_32',
    'ViT-L_16', 'ViT-L_32', 'ViT-H_14', 'ViT-S_16-gap-norep',
    'ViT-B_16-gap-norep', 'R+ViT-Ti_16', 'R26+ViT-S_32', 'R26+ViT-B_32',
    'R50+ViT-B_16', 'R50+ViT-L_32', 'Ti/16', 'S/16', 'S/32', 'B/16', 'B/32',
    'L/16', 'R_Ti/16', 'R26+S/32', 'R50+L/32', 'ViTC-S_16', 'ViTC-B_16',
    'Mixer-S_16', 'Mixer-S_32', 'Mixer-B_16', 'Mixer-B_32', 'Mixer-L_16',
    'Mixer-L_32', 'BiT-R26', 'BiT-R50',
)
