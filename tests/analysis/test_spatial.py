"""Tests of per-block feature maps, each unit's top image and the locality
measure: against numpy over the recorded intermediates, and on the released
ViT-Ti/16 against timm."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.analysis import spatial
from vit_jax.analysis import validate
from vit_jax.models import intermediates


def mlp_hidden(model, params, x) -> np.ndarray:
  """`intermediates.apply`'s MLP hidden units per block, [L, B, N, mlp_dim]
  (one compiled forward pass)."""
  f = jax.jit(lambda p, x: jnp.stack(
      intermediates.apply(model, p, x)[1]['mlp_hidden']))
  return np.asarray(f(params, jnp.asarray(x)))


@pytest.fixture(scope='module')
def mu():
  """mu/16 at 64 px with normal random parameters of its shapes (traced by
  `jax.eval_shape`, no init compiled): the maps, top images and locality
  are checked against the model's own recorded intermediates, which holds
  for any parameters."""
  model = models.get_model('mu/16', num_classes=5)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype),
      shapes['params'])
  x = np.asarray(jax.random.uniform(jax.random.key(1), (2, 64, 64, 3),
                                    minval=-1))
  return model, params, x


def test_without_attention_tokens_are_perfectly_local(mu):
  model, params, x = mu
  # Zeroing the attention output projections leaves each patch token a
  # function of its own patch only: all gradient mass on its own patch.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if any(
          getattr(k, 'key', None) == 'out' for k in p) else v, params)
  loc = spatial.locality(model, params, x, 'mlp', 3, per_side=2)
  np.testing.assert_allclose(loc['own'], 1.0, atol=1e-6)
  assert loc['chance_own'] == pytest.approx(1 / 16)


def test_locality_is_a_share(mu):
  model, params, x = mu
  # The feature of the test above: the same compiled gradient programs.
  loc = spatial.locality(model, params, x, 'mlp', 3, per_side=2)
  assert loc['own'].shape == (2,)
  assert ((loc['own'] > 0) & (loc['own'] <= loc['neighbourhood'])).all()
  assert (loc['neighbourhood'] <= 1 + 1e-6).all()


def test_bad_index_names_range(mu):
  model, params, x = mu
  with pytest.raises(validate.AnalysisError, match=r'allowed 0\.\.127'):
    spatial.maps(model, params, x, 'mlp', 500)
  with pytest.raises(validate.AnalysisError, match=r'layer 7 .*allowed 0\.\.1'):
    spatial.maps(model, params, x, 'mlp', 0, layers=[7])


@pytest.fixture(scope='module')
def mu_set(mu):
  """The mu model and 7 random images (batches of 3 leave a padded one)."""
  model, params, _ = mu
  x = np.asarray(jax.random.uniform(jax.random.key(2), (7, 64, 64, 3),
                                    minval=-1))
  hidden = mlp_hidden(model, params, x)
  return model, params, x, hidden  # hidden [L, B, 1 + 16, 128]


def test_maps_are_the_mlp_units_on_the_grid(mu_set):
  model, params, x, hidden = mu_set
  m = spatial.maps(model, params, x, 'mlp', 5)
  assert m.shape == (2, 7, 4, 4)  # [L, B, h, w]
  np.testing.assert_allclose(m, hidden[:, :, 1:, 5].reshape(2, 7, 4, 4),
                             rtol=1e-5, atol=1e-6)


def test_top_image_is_the_argmax_of_the_patch_mean(mu_set):
  model, params, x, hidden = mu_set
  units = list(range(128))
  res = spatial.top_images(model, params, x, units, batch_size=3)
  means = hidden[:, :, 1:, :].mean(axis=2)  # [L, B, U], class token dropped
  np.testing.assert_allclose(res['means'], means, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(res['image'], means.argmax(axis=1))
  np.testing.assert_allclose(res['mean'], means.max(axis=1), rtol=1e-5,
                             atol=1e-6)
  assert res['maps'].shape == (2, 128, 4, 4)
  for l in range(2):
    for u in (0, 17, 127):
      i = means[l, :, u].argmax()
      np.testing.assert_allclose(res['maps'][l, u],
                                 hidden[l, i, 1:, u].reshape(4, 4),
                                 rtol=1e-5, atol=1e-6)


def test_the_class_token_is_left_out(mu_set):
  model, params, x, hidden = mu_set
  with_cls = hidden.mean(axis=2).argmax(axis=1)      # [L, U]
  without = hidden[:, :, 1:].mean(axis=2).argmax(axis=1)
  differ = np.argwhere(with_cls != without)  # (layer, unit) pairs
  assert len(differ) >= 3, 'no unit where the class token matters'
  units = sorted({int(u) for _, u in differ})
  res = spatial.top_images(model, params, x, units)
  for l, u in differ:
    k = units.index(u)
    assert res['image'][l, k] == without[l, u] != with_cls[l, u]


def test_top_images_units_and_layers_are_checked(mu):
  model, params, x = mu
  res = spatial.top_images(model, params, x, [-1], layers=[-1])
  assert res['layers'] == [1] and res['units'] == [127]
  with pytest.raises(validate.AnalysisError, match=r'allowed 0\.\.127'):
    spatial.top_images(model, params, x, [128])
  with pytest.raises(validate.AnalysisError, match=r'layer 2 .*allowed 0\.\.1'):
    spatial.top_images(model, params, x, [0], layers=[2])
  with pytest.raises(validate.AnalysisError, match="'query' is not known"):
    spatial.top_images(model, params, x, [0], kind='query')


def test_top_images_of_the_released_ti16_agree_with_timm(shared_data,
                                                         fast_compile):
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  from vit_jax.checkpoints import npz  # pylint: disable=g-import-not-at-top
  from vit_jax.analysis import data  # pylint: disable=g-import-not-at-top
  ckpt = str(shared_data / 'checkpoints' /
             'ViT-Ti_16-augreg-i21k-ft-i1k-224.npz')
  paths = data.imagenet_samples(str(shared_data))[0][::200]  # 5 photos
  x = data.to_model(data.load_images(paths, 224, progress=False))
  layers, units = [0, 6, 11], list(range(12))
  model = models.get_model('Ti/16', num_classes=1000)
  params = npz.load_npz(ckpt)  # at its own 224 px: no init needed
  res = spatial.top_images(model, params, x, units, layers=layers)
  # timm's ViT-Ti/16 with the tanh GELU the checkpoint was trained with,
  # reading the same .npz; the MLP's GELU output hooked per block.
  ref = timm.create_model('vit_tiny_patch16_224', pretrained=False,
                          act_layer='gelu_tanh')
  ref.load_pretrained(ckpt)
  ref.eval()
  acts = {}
  for l in layers:
    ref.blocks[l].mlp.act.register_forward_hook(
        lambda m, i, o, l=l: acts.__setitem__(l, o[:, 1:].numpy()))
  with torch.no_grad():
    ref(torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2))
  for k, l in enumerate(layers):
    a = acts[l][..., units]  # [B, 196, K]
    means = a.mean(axis=1)
    np.testing.assert_allclose(res['means'][k], means, atol=2e-3)
    np.testing.assert_array_equal(res['image'][k], means.argmax(axis=0))
    best = a[means.argmax(axis=0), :, np.arange(len(units))]  # [K, 196]
    np.testing.assert_allclose(res['maps'][k], best.reshape(-1, 14, 14),
                               atol=2e-2)


def test_cli_writes_the_top_images_and_their_names(tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vit_jax.analysis import cli  # pylint: disable=g-import-not-at-top
  from vit_jax.analysis import data  # pylint: disable=g-import-not-at-top
  from vit_jax.analysis import modelinfo  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  folder = tmp_path / 'imgs'
  folder.mkdir()
  for i in range(6):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
        folder / f'n0000000{i}_photo{i}.png')
  out = tmp_path / 'out'
  rc = cli.main(['spatial', '--out', str(out), '--model', 'mu/16',
                     '--resolution', '32', '--images', str(folder),
                     '--limit', '5', '--units', '0,5,-1', '--batch_size', '2',
                     '--locality_images', '0'])
  assert rc == 0
  res = json.loads((out / 'spatial.json').read_text())
  assert (out / 'top_images.png').stat().st_size > 5000
  assert 'locality_own' not in res
  top = res['top_images']
  assert top['images_searched'] == 5 and top['units'] == [0, 5, 127]
  # The same random init (seed 0) and images, means by numpy.
  model, params = modelinfo.load('mu/16', None, (32, 32))
  paths = sorted(folder.iterdir())[:5]
  x = data.to_model(data.load_images([str(p) for p in paths], 32,
                                     progress=False))
  hidden = mlp_hidden(model, params, x)
  for l, block in enumerate(top['per_block']):
    means = hidden[l, :, 1:].mean(axis=1)
    for entry in block['units']:
      u = entry['unit']
      assert entry['image'] == paths[means[:, u].argmax()].stem
      assert entry['mean'] == pytest.approx(means[:, u].max(), abs=1e-4)
  rc = cli.main(['spatial', '--out', str(out), '--model', 'mu/16',
                     '--resolution', '32', '--images', str(folder),
                     '--units', '0,128'])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and err[-1].startswith('error: mlp feature index 128 is '
                                        'out of range: allowed 0..127')
