"""Linen-named `.npz` files (as the official Linen models write them) load
into our models through `npz_naming.to_released_naming`.

tests/fixtures/official/golden_cases.json holds, per tiny model, the keys
and shapes of google-research/vision_transformer's own Linen parameter tree
(flattened with '/' by that repository's test utilities) and the official
logits on `golden_inputs.random_images`; the values are
`golden_inputs.random_params`, rebuilt here.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden_inputs
from tests.conftest import REPO
from vit_jax.checkpoints import npz
from vit_jax import models
from vit_jax.checkpoints import npz_naming
from vit_jax.checkpoints import pretrained
from vit_jax.models import mixer
from vit_jax.models import vit

pytestmark = pytest.mark.usefixtures('fast_compile')

FIXTURES = REPO / 'tests' / 'fixtures' / 'official'
LINEN = json.loads((FIXTURES / 'golden_cases.json').read_text())['linen']
TOL = 1e-4

_TINY = dict(hidden_size=32, mlp_dim=64, num_heads=2, num_classes=5)
# Our constructors for the official tiny configs (see golden_cases.json).
OURS = {
    'vit_tiny': lambda: vit.VisionTransformer(
        patch_size=(8, 8), num_layers=2, representation_size=16, **_TINY),
    'hybrid_tiny': lambda: vit.VisionTransformer(
        patch_size=(1, 1), num_layers=1, resnet_layers=(1,), resnet_width=0.5,
        **_TINY),
    'mixer_tiny': lambda: mixer.MlpMixer(
        num_classes=5, patch_size=(8, 8), hidden_dim=32, num_blocks=2,
        tokens_mlp_dim=16, channels_mlp_dim=64),
}
# Mixer's names are the same in both namings (see the npz_naming doc).
NAMING = {'vit_tiny': 'linen', 'hybrid_tiny': 'linen',
          'mixer_tiny': 'pre-linen'}


def linen_file(case: str) -> dict[str, np.ndarray]:
  """The Linen-named checkpoint the official code read: its keys and shapes
  (from the official Linen model's tree, in golden_cases.json) with the
  values of `golden_inputs.random_params` (checked by their sha256)."""
  c = LINEN[case]
  flat = golden_inputs.random_params(c['shapes'], c['seed'])
  assert golden_inputs.sha256_of_params(flat) == c['params_sha256'], (
      f'{case}: the generated parameters differ from those the official '
      'logits were computed with')
  return flat


def official(case: str) -> tuple[np.ndarray, np.ndarray]:
  """(images [2, 32, 32, 3], official logits [2, 5])."""
  c = LINEN[case]
  return (golden_inputs.random_images(c['images_seed'], 2, c['image_size']),
          np.asarray(c['official_logits'], np.float32))


def init_shapes(model):
  return jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, 32, 32, 3)))['params']


def apply(model, params, x):
  return np.asarray(jax.jit(model.apply)({'params': params}, x))


@pytest.mark.parametrize('case', sorted(OURS))
def test_linen_file_gives_the_official_logits(case):
  flat = linen_file(case)
  converted, naming = npz_naming.to_released_naming(flat)
  assert naming == NAMING[case]
  model = OURS[case]()
  params = npz.merge(init_shapes(model), npz.unflatten(converted))
  x, want = official(case)
  diff = float(np.abs(apply(model, params, x) - want).max())
  assert diff <= TOL, f'{case}: max |logit diff| {diff:.3g}'


@pytest.mark.parametrize('case', ['vit_tiny', 'hybrid_tiny'])
def test_released_naming_written_by_save_npz_gives_identical_logits(
    tmp_path, case):
  model = OURS[case]()
  converted, _ = npz_naming.to_released_naming(linen_file(case))
  params = npz.merge(init_shapes(model), npz.unflatten(converted))
  path = str(tmp_path / 'released.npz')
  npz.save_npz(path, params)
  written = npz.read_npz(path)
  block = 'Transformer/encoderblock_0/'
  assert {k.split('/')[2] for k in written if k.startswith(block)} == {
      'LayerNorm_0', 'MultiHeadDotProductAttention_1', 'LayerNorm_2',
      'MlpBlock_3'}
  same, naming = npz_naming.to_released_naming(written)
  assert naming == 'pre-linen' and same.keys() == written.keys()
  x, _ = official(case)
  reloaded = pretrained.fit(model, init_shapes(model), pretrained.read(path))
  np.testing.assert_array_equal(apply(model, reloaded, x),
                                apply(model, params, x))


@pytest.mark.parametrize('case', sorted(OURS))
def test_the_reader_converts_and_says_which_naming_it_read(tmp_path, case):
  """`npz.read_npz` / `pretrained.read` (every loading path) take the
  Linen file as it is, and report its naming."""
  path = str(tmp_path / f'linen_{case}.npz')
  np.savez(path, **linen_file(case))
  restored = pretrained.read(path)
  assert restored.naming == NAMING[case]
  assert f'npz, {NAMING[case]} naming' in restored.describe()
  model = OURS[case]()
  x, want = official(case)
  got = apply(model, pretrained.fit(model, init_shapes(model), restored), x)
  assert float(np.abs(got - want).max()) <= TOL


def _rename_block(flat, block, mapping):
  out = {}
  for k, v in flat.items():
    parts = k.split('/')
    if k.startswith(block + '/'):
      parts[2] = mapping.get(parts[2], parts[2])
    out['/'.join(parts)] = v
  return out


def test_blocks_in_both_namings_raise():
  flat = _rename_block(linen_file('vit_tiny'), 'Transformer/encoderblock_1',
                       npz_naming.LINEN_TO_RELEASED)
  with pytest.raises(ValueError, match='mixed naming') as e:
    npz_naming.to_released_naming(flat)
  assert 'Transformer/encoderblock_0' in str(e.value)
  assert 'Transformer/encoderblock_1' in str(e.value)
  assert '\n' not in str(e.value)


def test_one_block_with_both_namings_raises():
  flat = linen_file('vit_tiny')
  for k in list(flat):  # MlpBlock_0 and MlpBlock_3 side by side in block 0
    if k.startswith('Transformer/encoderblock_0/MlpBlock_0/'):
      flat[k.replace('MlpBlock_0', 'MlpBlock_3')] = flat[k]
  with pytest.raises(ValueError, match=r'encoderblock_0: submodules .* '
                     'neither') as e:
    npz_naming.to_released_naming(flat)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('flat,match', [
    ({}, 'no arrays'),
    ({'Transformer/encoderblock/LayerNorm_0/scale': np.ones((2, 4))},
     'stacked'),
])
def test_unknown_layouts_raise(flat, match):
  with pytest.raises(ValueError, match=match):
    npz_naming.to_released_naming(flat)


def test_resnet_files_pass_unchanged():
  """The official Linen hybrid's stem keys (conv_root, gn_root, block1/...)
  are those of our ResNet classifier, and such a file is returned as is."""
  official_stem = {k for k in LINEN['hybrid_tiny']['keys']
                   if k.split('/')[0] in ('conv_root', 'gn_root', 'block1')}
  resnet = models.get_model('BiT-R8', num_classes=5)
  flat = {k: np.zeros(v.shape, v.dtype) for k, v in
          npz.flatten(init_shapes(resnet)).items()}
  assert {k for k in flat if k.split('/')[0] in (
      'conv_root', 'gn_root', 'block1')} == official_stem
  same, naming = npz_naming.to_released_naming(flat)
  assert naming == 'pre-linen' and same.keys() == flat.keys()


def test_the_released_ti16_is_read_as_pre_linen(shared_data):
  flat = npz.read_npz(
      str(shared_data / 'checkpoints' / 'ViT-Ti_16-augreg-i21k-ft-i1k-224.npz'))
  same, naming = npz_naming.to_released_naming(flat)
  assert naming == 'pre-linen' and same.keys() == flat.keys()
  assert 'Transformer/encoderblock_11/MlpBlock_3/Dense_1/kernel' in same
