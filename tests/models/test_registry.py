"""Registry names, parameter counts (vs timm) and FLOPs of the presets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.perf import flops
from vit_jax.models import vit

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')


@functools.cache
def abstract_params(model, size=224):
  """`model`'s abstract init at `size` px; per distinct model (aliases build
  equal modules), shared between the tests."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)['params']


def n_params(model, size=224):
  return flops.count_params(abstract_params(model, size))


def headless_params(model):
  """n_params of `model` without its head's parameters."""
  return flops.count_params({k: v for k, v in abstract_params(model).items()
                             if k != 'head'})


def registry_params(name):
  """n_params of the named model (1000 classes, 224 px). One of 24 or more
  blocks is counted on its scanned form, as the big presets below: the same
  parameters, stacked (tests/models/test_scan.py; So400m unrolled in
  test_big_preset_names_parse), whose abstract init traces 2 blocks."""
  model = models.get_model(name)
  depth = getattr(model, 'num_layers', None) or getattr(model, 'num_blocks', 0)
  if depth >= 24:
    model = model.clone(scan_layers=True)
  return n_params(model)


def timm_params(name, **kw):
  if name.startswith('vit_'):  # timm's init only fills values; skipped
    kw.setdefault('weight_init', 'skip')
  with torch.device('meta'):  # shapes only, nothing allocated
    m = timm.create_model(name, pretrained=False, **kw)
  return sum(p.numel() for p in m.parameters())


# our name -> timm name (same architecture, 1000 classes, 224 px).
SAME_AS_TIMM = {
    'ViT-Ti_16': 'vit_tiny_patch16_224',
    'ViT-S_16': 'vit_small_patch16_224',
    'ViT-S_32': 'vit_small_patch32_224',
    'ViT-B_8': 'vit_base_patch8_224',
    'ViT-B_16': 'vit_base_patch16_224',
    'ViT-B_32': 'vit_base_patch32_224',
    'ViT-L_16': 'vit_large_patch16_224',
    'ViT-L_32': 'vit_large_patch32_224',
    'ViT-H_14': 'vit_huge_patch14_224',
    'R+ViT-Ti_16': 'vit_tiny_r_s16_p8_224',
    'R26+ViT-S_32': 'vit_small_r26_s32_224',
    'R26+ViT-B_32': 'vit_base_r26_s32_224',
    'R50+ViT-B_16': 'vit_base_r50_s16_224',
    'R50+ViT-L_32': 'vit_large_r50_s32_224',
    'Mixer-S_16': 'mixer_s16_224',
    'Mixer-S_32': 'mixer_s32_224',
    'Mixer-B_16': 'mixer_b16_224',
    'Mixer-B_32': 'mixer_b32_224',
    'Mixer-L_16': 'mixer_l16_224',
    'Mixer-L_32': 'mixer_l32_224',
}


@pytest.mark.parametrize('name', sorted(SAME_AS_TIMM))
def test_param_count_equals_timm(name):
  assert registry_params(name) == timm_params(SAME_AS_TIMM[name],
                                              num_classes=1000)


# Big presets (timm's same architectures; 1000 classes, 224 px). Counted
# on the scanned model: its abstract init traces one block, not 27-56.
BIG_AS_TIMM = {
    'g/14': 'vit_giant_patch14_224',
    'G/14': 'vit_gigantic_patch14_224',
    'So400m/14-map': 'vit_so400m_patch14_siglip_224',
}


@pytest.mark.parametrize('name', sorted(BIG_AS_TIMM))
def test_big_presets_param_count_equals_timm(name):
  model = models.get_model(name, scan_layers=True)
  assert n_params(model) == timm_params(BIG_AS_TIMM[name], num_classes=1000)


def test_big_presets_against_published_counts():
  """Zhai et al. 2022 table 2: ViT-g/14 1011 M, ViT-G/14 1843 M; PaLI
  (Chen et al. 2022): ViT-e 3.9 B; Alabdulmohsin et al. 2023: SoViT-400m/14
  428 M (MAP head). Encoder + stem, no head, 224 px."""
  published = {'g/14': 1011e6, 'G/14': 1843e6, 'e/14': 3.9e9,
               'So400m/14-map': 428e6}
  rel = {'e/14': 0.03}  # PaLI rounds; ours: 3.805 B
  for name, want in published.items():
    # the 1000-class model's (test_big_presets_param_count_equals_timm)
    # without its head
    got = headless_params(models.get_model(name, scan_layers=True))
    assert abs(got / want - 1) < rel.get(name, 0.002), (name, got, want)
  # = the count of the model built without a head (ViT-Ti/16: counted above)
  assert headless_params(models.get_model('ViT-Ti_16')) == n_params(
      models.get_model('ViT-Ti_16', num_classes=0))


def test_big_preset_names_parse():
  want = {'g': (1408, 40, 6144, 16), 'G': (1664, 48, 8192, 16),
          'e': (1792, 56, 15360, 16), 'So400m': (1152, 27, 4304, 16)}
  for size, (width, depth, mlp, heads) in want.items():
    for name in (f'{size}/14', f'ViT-{size}_14'):
      m = models.get_model(name)
      assert (m.hidden_size, m.num_layers, m.mlp_dim, m.num_heads,
              tuple(m.patch_size)) == (width, depth, mlp, heads, (14, 14))
  assert models.get_model('So400m/14-map').classifier == 'map'
  assert models.get_model('S/16').hidden_size == 384  # not So400m
  # scanned and unrolled: the same count (So400m: 27 blocks unrolled)
  m = models.get_model('So400m/14', num_classes=0)
  assert n_params(m) == n_params(m.clone(scan_layers=True)) == 412_444_656


def test_param_counts_of_the_official_release():
  """Counts published in the official models_test.py (1000 classes)."""
  assert n_params(models.get_model('ViT-B_16')) == 86_567_656
  assert n_params(models.get_model('R50+ViT-B_16')) == 98_659_112
  assert n_params(models.get_model('ViT-Ti_16')) == 5_717_416


def test_augreg_and_official_names_agree():
  pairs = [('Ti/16', 'ViT-Ti_16'), ('R26+S/32', 'R26+ViT-S_32'),
           ('R_Ti/16', 'R+ViT-Ti_16'), ('R50+L/32', 'R50+ViT-L_32'),
           ('B/16', 'ViT-B_16'), ('Mixer-B/16', 'Mixer-B_16')]
  for a, b in pairs:
    assert models.get_model(a) == models.get_model(b), (a, b)


@pytest.mark.parametrize('name', models.EXAMPLE_NAMES)
def test_every_example_name_builds(name):
  # at the defaults: most are the models counted above
  assert registry_params(name) > 0


@pytest.mark.parametrize('bad', ['ViT-X_16', 'B16', 'R50+ViT-B_8', 'Mixer-H_16',
                                 'BiT-R77', '', 'So400/14', 'E/14',
                                 'Mixer-g_14'])
def test_unknown_name_is_an_error_listing_examples(bad):
  with pytest.raises(ValueError, match='ViT-B_16|known: R'):
    models.get_model(bad)


def test_unknown_override_is_an_error_naming_it():
  with pytest.raises(ValueError, match="unknown model option.*hidden_sise"):
    models.get_model('B/16', hidden_sise=3)


def _vit_macs_by_hand(layers, d, mlp, tokens, patch_pixels, classes):
  """Multiply-accumulates of a class-token ViT forward pass, one image:
  patch embedding, then per block Q (q rows) and K, V (all t rows)
  projections, q x t scores and weighted values, the output projection and
  the two MLP layers; the last block computes q = 1 row (the class token,
  the only one read), the others q = t; then the head."""
  def block(q, t):
    return (q * d * d + 2 * t * d * d + 2 * q * t * d + q * d * d
            + 2 * q * d * mlp)
  t = tokens
  return ((t - 1) * patch_pixels * d + (layers - 1) * block(t, t)
          + block(1, t) + d * classes)


def test_flops_match_closed_form():
  """FLOPs read off the jaxpr = 2 x the multiply-accumulates counted by
  hand."""
  # widths, heads and patches of the variants, 2 of their blocks (each block
  # but the last is the same code; the full B/16: test_flops_of_known_models)
  layers = 2
  for size, patch, res in [('B', 16, 224), ('Ti', 16, 384), ('L', 32, 224)]:
    v = vit.VARIANTS[size]
    model = models.get_model(f'{size}/{patch}', num_layers=layers)
    t = (res // patch) ** 2 + 1
    expected = 2 * _vit_macs_by_hand(layers, v['hidden_size'], v['mlp_dim'],
                                     t, patch * patch * 3, 1000)
    assert flops.forward_flops(model, (res, res)) == expected


def test_flops_of_known_models():
  # ViT-B/16: 17.6 G multiply-accumulates (the figure usually quoted, every
  # token through every block) ...
  full = flops.vit_flops_formula(12, 768, 3072, 197, 768, 1000)
  assert abs(full / 2 - 17.56e9) < 0.05e9
  # ... 16.3 G here, where the last block computes the class token alone.
  b16 = flops.forward_flops(models.get_model('B/16'))
  assert abs(b16 / 2 - 16.35e9) < 0.05e9
  # ResNet-50: 4.1 G multiply-accumulates at 224.
  r50 = flops.forward_flops(models.get_model('BiT-R50'))
  assert abs(r50 / 2 - 4.1e9) < 0.1e9


def test_param_count_of_arrays_and_shapes_agree():
  model = models.get_model('mu/16', num_classes=3, num_layers=1)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert flops.count_params(params) == n_params(model, 32)
  assert flops.count_params(params) == sum(
      np.size(x) for x in jax.tree_util.tree_leaves(params))
