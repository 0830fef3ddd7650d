"""Our models vs timm, an implementation nobody here wrote.

Each case: build our model, randomize every parameter, write the official
`.npz` layout with `npz.save_npz`, load that file with timm's own
`.npz` loader (`model.load_pretrained`, i.e. `_load_weights`) into the
matching timm model, and compare logits on the same input.

Like with like: our default MLP activation is the tanh-form GELU of the
official code (`flax.linen.gelu`), so timm runs with `act_layer='gelu_tanh'`;
our `mlp_activation='gelu_erf'` is compared with timm's default `nn.GELU`.

Our models are built as a run on a one-device CPU builds them: with the
computation hooks of the default `config.perf` there (`vit_jax.perf.hooks`;
tests/models/test_fast_paths.py checks every other piece against these).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden_inputs
from vit_jax.checkpoints import npz
from vit_jax import models
from vit_jax.perf import flops
from vit_jax.perf import hooks

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
torch.set_num_threads(2)


def get_model(name, **kw):
  """The model with the default `config.perf` hooks of a one-device CPU."""
  return models.get_model(name, **hooks.model_overrides({}, 'cpu', 1, name),
                          **kw)


# The weight-standardized ResNet convolutions of the hybrids.
STD_CONV = re.compile(r'(conv_root|block\d+/unit\d+/conv\w+)/kernel')


def randomized_params(model, image_size, seed=0):
  """Every leaf random (`golden_inputs.random_params` over the shapes of an
  abstract init: norm scales 1 + 0.1 z, biases 0.05 z, kernels
  z / sqrt(fan_in), embeddings 0.1 z), so that norms, biases, the head and
  each residual branch are non-trivial and a mis-mapped leaf cannot hide.
  Standardized conv kernels are z: their scale is divided out, except that
  the official eps (std + 1e-5) and timm's (sqrt(var + 1e-8)) then differ
  by 1e-5 relative, not 1e-5 * sqrt(fan_in) (4e-4 on a hybrid's logits)."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = npz.flatten(jax.eval_shape(model.init, jax.random.key(0), x))
  flat = golden_inputs.random_params({k: v.shape for k, v in shapes.items()},
                                     seed)
  for k, v in flat.items():
    if STD_CONV.fullmatch(k):
      flat[k] = v * np.float32(np.sqrt(np.prod(v.shape[:-1])))
  return npz.unflatten(flat)


def timm_without_init(factory, *args, **kw):
  """A timm model whose every parameter and buffer is NaN: what it computes
  with must come from the checkpoint it loads (and timm's own random init,
  a few seconds per model, is skipped)."""
  with torch.device('meta'):
    m = factory(*args, **kw)
  m = m.to_empty(device='cpu')
  with torch.no_grad():
    for t in (*m.parameters(), *m.buffers()):
      if t.is_floating_point():
        t.fill_(float('nan'))
  return m


def ours_and_theirs(tmp_path, model, timm_model, image_size, batch=2):
  """Random parameters written as `.npz` and loaded by timm's reader:
  (our jitted forward, our parameters, input, timm's logits)."""
  params = randomized_params(model, image_size)
  path = str(tmp_path / 'ckpt.npz')
  npz.save_npz(path, params)
  timm_model.load_pretrained(path)
  timm_model.eval()
  x = np.random.RandomState(0).uniform(
      -1, 1, (batch, image_size, image_size, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = timm_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
  return forward, params, x, theirs


def assert_same_logits(ours, theirs):
  ours = np.asarray(ours)
  assert ours.shape == theirs.shape
  assert np.std(ours) > 1e-2, 'logits are degenerate; the test would be weak'
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def compare_with_timm(tmp_path, model, timm_model, image_size, batch=2):
  forward, params, x, theirs = ours_and_theirs(tmp_path, model, timm_model,
                                               image_size, batch)
  assert_same_logits(forward(params, x), theirs)
  # the parameter counts agree too
  assert flops.count_params(params) == sum(
      p.numel() for p in timm_model.parameters())


TANH = dict(act_layer='gelu_tanh')  # timm's GELUTanh = flax.linen.gelu
ERF = dict(mlp_activation='gelu_erf')  # ours, exact: timm's default GELU
# The larger models with 2 of their 12 blocks (every block is the same code;
# Ti/16 runs at full depth): (our num_layers, timm depth).
SHALLOW = (dict(num_layers=2), dict(depth=2))

VIT_CASES = [
    ('Ti/16', 'vit_tiny_patch16_224', 224, {}, TANH),
    ('Ti/16-erf', 'vit_tiny_patch16_224', 224, ERF, {}),
    ('ViT-B_16', 'vit_base_patch16_224', 224, SHALLOW[0],
     dict(SHALLOW[1], **TANH)),
    ('ViT-B_32', 'vit_base_patch32_384', 384, SHALLOW[0],
     dict(SHALLOW[1], **TANH)),
    # gap: official layout has no class token and pools after encoder_norm
    ('ViT-S_16-gap-norep', 'vit_small_patch16_224', 224, SHALLOW[0],
     dict(class_token=False, global_pool='avg', fc_norm=False, **SHALLOW[1],
          **TANH)),
    # at 128 px (a 4x4 grid): the ResNet stem dominates the test's time
    ('R26+S/32', 'vit_small_r26_s32_224', 128, SHALLOW[0],
     dict(SHALLOW[1], img_size=128, **TANH)),
    ('R_Ti/16', 'vit_tiny_r_s16_p8_224', 224, {}, TANH),
]


@pytest.mark.parametrize('name,timm_name,size,ours_kw,timm_kw', VIT_CASES,
                         ids=[c[0] for c in VIT_CASES])
def test_logits_match_timm(tmp_path, name, timm_name, size, ours_kw, timm_kw):
  model = get_model(name.removesuffix('-erf'), num_classes=1000, **ours_kw)
  timm_model = timm_without_init(timm.create_model, timm_name,
                                 pretrained=False, num_classes=1000, **timm_kw)
  compare_with_timm(tmp_path, model, timm_model, size)


@pytest.mark.parametrize('ours_kw,timm_kw', [({}, TANH), (ERF, {})],
                         ids=['gelu_tanh', 'gelu_erf'])
def test_map_head_matches_timm(tmp_path, ours_kw, timm_kw):
  """Attention-pooling head (big_vision MAPHead = timm AttentionPoolLatent)."""
  model = get_model('S/16', classifier='map', num_classes=10, num_layers=2,
                    **ours_kw)
  timm_model = timm_without_init(
      timm.models.VisionTransformer, img_size=64, patch_size=16,
      embed_dim=384, depth=2, num_heads=6, num_classes=10, class_token=False,
      global_pool='map', **timm_kw)
  compare_with_timm(tmp_path, model, timm_model, 64)


def test_timm_parity_catches_a_small_difference(tmp_path):
  """The comparison is sharp: a 1 % change of one LayerNorm scale (on our
  side, after the file was written) fails it."""
  model = get_model('mu/16', num_classes=10)
  timm_model = timm_without_init(
      timm.models.VisionTransformer, img_size=32, patch_size=16, embed_dim=32,
      depth=2, num_heads=2, mlp_ratio=4, num_classes=10, **TANH)
  forward, params, x, theirs = ours_and_theirs(tmp_path, model, timm_model,
                                               32)
  assert_same_logits(forward(params, x), theirs)  # passes as it is
  ln = params['Transformer']['encoderblock_1']['LayerNorm_2']
  ln['scale'] = ln['scale'] * 1.01
  with pytest.raises(AssertionError):
    assert_same_logits(forward(params, x), theirs)


@pytest.mark.parametrize('ours_kw,timm_kw', [({}, TANH), (ERF, {})],
                         ids=['gelu_tanh', 'gelu_erf'])
def test_mixer_matches_timm(ours_kw, timm_kw):
  """timm has no `.npz` reader for Mixer: map the official keys by hand."""
  model = get_model('Mixer-B_16', num_blocks=2, num_classes=10, **ours_kw)
  size = 64
  params = randomized_params(model, size)
  flat = npz.flatten(params)
  timm_model = timm_without_init(
      timm.models.MlpMixer, num_classes=10, img_size=size, patch_size=16,
      num_blocks=2, embed_dim=768, mlp_ratio=(0.5, 4.0),
      # MlpMixer takes the activation as a class, not a name
      **{k: timm.layers.get_act_layer(v) for k, v in timm_kw.items()})
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  sd = {'stem.proj.weight': t(flat['stem/kernel'].transpose(3, 2, 0, 1)),
        'stem.proj.bias': t(flat['stem/bias']),
        'norm.weight': t(flat['pre_head_layer_norm/scale']),
        'norm.bias': t(flat['pre_head_layer_norm/bias']),
        'head.weight': t(flat['head/kernel'].T),
        'head.bias': t(flat['head/bias'])}
  for i in range(2):
    b = f'MixerBlock_{i}/'
    for ours, theirs in [('LayerNorm_0', 'norm1'), ('LayerNorm_1', 'norm2')]:
      sd[f'blocks.{i}.{theirs}.weight'] = t(flat[b + ours + '/scale'])
      sd[f'blocks.{i}.{theirs}.bias'] = t(flat[b + ours + '/bias'])
    for ours, theirs in [('token_mixing', 'mlp_tokens'),
                         ('channel_mixing', 'mlp_channels')]:
      for j in range(2):
        sd[f'blocks.{i}.{theirs}.fc{j + 1}.weight'] = t(
            flat[f'{b}{ours}/Dense_{j}/kernel'].T)
        sd[f'blocks.{i}.{theirs}.fc{j + 1}.bias'] = t(
            flat[f'{b}{ours}/Dense_{j}/bias'])
  timm_model.load_state_dict(sd, strict=True)
  timm_model.eval()
  x = np.random.RandomState(0).uniform(-1, 1, (2, size, size, 3)).astype(
      np.float32)
  with torch.no_grad():
    theirs = timm_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  assert_same_logits(jax.jit(model.apply)({'params': params}, x), theirs)
