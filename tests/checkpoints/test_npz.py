"""`.npz` round trip, adaptation to new shapes, and the errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from tests import tiny_configs
from vit_jax.checkpoints import __main__ as checkpoints_cli
from vit_jax.checkpoints import npz
from vit_jax import models
from vit_jax.checkpoints import pretrained

pytestmark = pytest.mark.usefixtures('fast_compile')


def _size(size):
  return size if isinstance(size, tuple) else (size, size)


def init(model, size):
  """The model's own initial parameters (computed: compiles the init)."""
  x = jnp.zeros((1, *_size(size), 3))
  return jax.jit(model.init)(jax.random.key(0), x)['params']


_SHAPES = {}


def shapes(model, size):
  """The model's parameter tree of shapes and dtypes at `size`: traced by
  `jax.eval_shape`, nothing compiled or computed."""
  key = (repr(model), _size(size))
  if key not in _SHAPES:
    x = jax.ShapeDtypeStruct((1, *_size(size), 3), jnp.float32)
    _SHAPES[key] = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  return _SHAPES[key]


def randomize(params, seed=1):
  """Standard normal values of the shapes and dtypes of `params`."""
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(
      lambda l: rng.standard_normal(l.shape).astype(l.dtype), params)


def load(path, model, size, init_params=None):
  """The one loading path: read the file, fit it to `model` at `size`.

  `init_params`: the model's fresh parameters; by default random values of
  their shapes (what `fit` takes from them is only a re-initialized head).
  """
  if init_params is None:
    init_params = randomize(shapes(model, size), seed=2)
  return pretrained.fit(model, init_params, pretrained.read(path),
                        _size(size))


# Small transformer for the hybrid: the stem is what matters here.
TINY = tiny_configs.TRANSFORMER


@pytest.mark.parametrize('name,kw', [('mu/16', {}), ('R_Ti/16', TINY),
                                     ('Mixer-mu_16', {}), ('BiT-R8', {}),
                                     ('ViTC-mu_16', {})])
def test_round_trip_is_exact(tmp_path, name, kw):
  model = models.get_model(name, num_classes=7, **kw)
  params = randomize(shapes(model, 64))
  path = str(tmp_path / 'p.npz')
  npz.save_npz(path, params)
  back = npz.load_npz(path)
  flat_a, flat_b = npz.flatten(params), npz.flatten(back)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    assert flat_b[k].dtype == flat_a[k].dtype
    np.testing.assert_array_equal(flat_b[k], flat_a[k])
  # and loading into the same model is exact too
  merged = npz.merge(params, back)
  jax.tree_util.tree_map(np.testing.assert_array_equal, merged,
                         jax.tree_util.tree_map(np.asarray, params))


def test_saved_keys_are_the_official_names(tmp_path):
  model = models.get_model('mu/16', num_classes=5, representation_size=8)
  path = str(tmp_path / 'p.npz')
  npz.save_npz(path, randomize(shapes(model, 32)))
  keys = set(np.load(path).files)
  d, h = 32, 2
  expected = {
      'embedding/kernel': (16, 16, 3, d),
      'cls': (1, 1, d),
      'Transformer/posembed_input/pos_embedding': (1, 5, d),
      'Transformer/encoderblock_0/LayerNorm_0/scale': (d,),
      'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel':
          (d, h, d // h),
      'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel':
          (h, d // h, d),
      'Transformer/encoderblock_1/LayerNorm_2/bias': (d,),
      'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel': (d, 128),
      'Transformer/encoder_norm/scale': (d,),
      'pre_logits/kernel': (d, 8),
      'head/kernel': (8, 5),
  }
  z = np.load(path)
  for k, shape in expected.items():
    assert k in keys, k
    assert z[k].shape == shape, k


def test_posemb_resampling_matches_scipy_and_keeps_cls():
  rng = np.random.RandomState(0)
  pe = rng.randn(1, 1 + 4 * 4, 6).astype(np.float32)
  out = npz.resample_posemb(pe, (6, 6), num_prefix=1)
  assert out.shape == (1, 37, 6)
  np.testing.assert_array_equal(out[:, 0], pe[:, 0])
  grid = scipy.ndimage.zoom(pe[0, 1:].reshape(4, 4, 6), (1.5, 1.5, 1), order=1)
  np.testing.assert_allclose(out[0, 1:], grid.reshape(36, 6), rtol=1e-6)
  # corners are kept (corner-aligned linear interpolation)
  np.testing.assert_allclose(out[0, 1], pe[0, 1], rtol=1e-6)
  np.testing.assert_allclose(out[0, -1], pe[0, -1], rtol=1e-6)


def test_posemb_resampling_of_a_linear_ramp_is_exact():
  """Bilinear resampling reproduces a field that is linear in (row, col)."""
  r, c = np.meshgrid(np.arange(3), np.arange(5), indexing='ij')
  field = np.stack([r, c], -1).reshape(1, 15, 2).astype(np.float64)
  out = npz.resample_posemb(field, (5, 9), num_prefix=0,
                                   old_grid=(3, 5))
  r2, c2 = np.meshgrid(np.linspace(0, 2, 5), np.linspace(0, 4, 9),
                       indexing='ij')
  np.testing.assert_allclose(out.reshape(5, 9, 2), np.stack([r2, c2], -1),
                             atol=1e-12)


def test_load_at_higher_resolution_non_square_and_gap(tmp_path):
  src = models.get_model('mu/16', num_classes=10, classifier='gap')
  src_params = randomize(shapes(src, 64))  # 4x4 grid, no class token
  path = str(tmp_path / 's.npz')
  npz.save_npz(path, src_params)
  dst = models.get_model('mu/16', num_classes=10, classifier='gap')
  size = (96, 128)  # 6x8 grid
  out = load(path, dst, size)
  pe = out['Transformer']['posembed_input']['pos_embedding']
  assert pe.shape == (1, 48, 32)
  old = np.asarray(src_params['Transformer']['posembed_input']['pos_embedding'])
  expected = scipy.ndimage.zoom(old[0].reshape(4, 4, 32), (6 / 4, 8 / 4, 1),
                                order=1).reshape(1, 48, 32)
  np.testing.assert_allclose(pe, expected, rtol=1e-5, atol=1e-6)
  # The fitted tree is the model's at the new size (applied on shapes).
  y = jax.eval_shape(dst.apply, {'params': out},
                     jax.ShapeDtypeStruct((2, *size, 3), jnp.float32))
  assert y.shape == (2, 10)


def test_new_head_is_zero_and_pre_logits_dropped(tmp_path):
  src = models.get_model('mu/16', num_classes=1000, representation_size=32)
  path = str(tmp_path / 's.npz')
  src_params = randomize(shapes(src, 32))
  npz.save_npz(path, src_params)
  dst = models.get_model('mu/16', num_classes=10)
  out = load(path, dst, 32, init_params=init(dst, 32))  # its own zero head
  assert 'pre_logits' not in out
  assert out['head']['kernel'].shape == (32, 10)
  assert not np.any(out['head']['kernel'])
  np.testing.assert_array_equal(
      out['embedding']['kernel'], src_params['embedding']['kernel'])
  # same head size: the head is kept
  same = models.get_model('mu/16', num_classes=1000)
  out = load(path, same, 32)
  np.testing.assert_array_equal(out['head']['kernel'],
                                src_params['head']['kernel'])


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
  path = str(tmp_path / 's.npz')
  npz.save_npz(path, randomize(shapes(models.get_model('mu/16'), 32)))
  dst = models.get_model('mu/16', mlp_dim=64)
  with pytest.raises(pretrained.PretrainedError,
                     match=r'encoderblock_0/MlpBlock_3/Dense_0/kernel: '
                     r'checkpoint has shape \(32, 128\), the model expects '
                     r'\(32, 64\).*Dense_1/kernel'):
    load(path, dst, 32)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
  path = str(tmp_path / 's.npz')
  npz.save_npz(path, randomize(shapes(models.get_model('mu/16', num_layers=3),
                                      32)))
  with pytest.raises(pretrained.PretrainedError,
                     match='unexpected in checkpoint: Transformer/'
                     'encoderblock_2/'):
    load(path, models.get_model('mu/16'), 32)
  with pytest.raises(pretrained.PretrainedError,
                     match='missing in checkpoint: .*encoderblock_3/'):
    load(path, models.get_model('mu/16', num_layers=4), 32)
  gap = models.get_model('mu/16', classifier='gap')
  with pytest.raises(pretrained.PretrainedError,
                     match='unexpected in checkpoint: .*, cls$'):
    load(path, gap, 32)


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(npz.CheckpointError, match='not found'):
    npz.load_npz(str(tmp_path / 'nope.npz'))
  bad = tmp_path / 'bad.npz'
  bad.write_bytes(b'not a zip')
  with pytest.raises(npz.CheckpointError, match='not a readable'):
    npz.load_npz(str(bad))


def test_legacy_groupnorm_shapes_are_fixed(tmp_path):
  model = models.get_model('R_Ti/16', num_classes=3, **TINY)
  params = randomize(shapes(model, 32))
  flat = {k: np.asarray(v) for k, v in npz.flatten(params).items()}
  flat['gn_root/scale'] = flat['gn_root/scale'].reshape(1, 1, 1, -1)
  path = str(tmp_path / 'old.npz')
  np.savez(path, **flat)
  out = load(path, model, 32)
  np.testing.assert_array_equal(out['gn_root']['scale'],
                                params['gn_root']['scale'])


def test_inspect_cli(tmp_path, capsys):
  """The entry point as a process on a written file; a missing file
  in-process (exit status 1, one line)."""
  path = str(tmp_path / 's.npz')
  npz.save_npz(path, randomize(shapes(models.get_model('mu/16', num_classes=4),
                                      32)))
  out = subprocess.run([sys.executable, '-m', 'vit_jax.checkpoints', 'inspect',
                        path], capture_output=True, text=True, check=True)
  assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel' in out.stdout
  assert '(128, 32)' in out.stdout
  n = sum(np.size(v) for v in np.load(path).values())
  assert f'{n:,} parameters' in out.stdout
  assert checkpoints_cli.main(['inspect', str(tmp_path / 'x.npz')]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: checkpoint not found')


def test_truncated_and_empty_npz_are_one_line_errors(tmp_path):
  """A download cut short (zipfile.BadZipFile inside numpy) and an empty
  file are CheckpointErrors naming the file, not tracebacks."""
  good = str(tmp_path / 'good.npz')
  npz.save_npz(good, randomize(shapes(models.get_model('mu/16'), 32)))
  data = open(good, 'rb').read()
  for name, content in [('half.npz', data[:len(data) // 2]),
                        ('tail_cut.npz', data[:-30]), ('empty.npz', b'')]:
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(npz.CheckpointError,
                       match=f'{name} is not a readable .npz'):
      npz.read_npz(str(bad))
  single = tmp_path / 'single.npy'
  np.save(single, np.zeros(3))
  with pytest.raises(npz.CheckpointError, match='not a readable'):
    npz.read_npz(str(single))


def test_nan_or_inf_weights_are_refused_naming_the_first_key(tmp_path):
  params = randomize(shapes(models.get_model('mu/16'), 32))
  flat = {k: np.asarray(v) for k, v in npz.flatten(params).items()}
  flat['head/bias'] = flat['head/bias'].copy()
  flat['head/bias'][3] = np.nan
  flat['cls'] = np.full_like(flat['cls'], np.inf)
  path = str(tmp_path / 'nan.npz')
  np.savez(path, **flat)
  # 'cls' sorts before 'head/bias': the first key is named, with a count
  with pytest.raises(pretrained.PretrainedError,
                     match=r'nan.npz: cls holds 32 NaN/Inf value\(s\) of 32'):
    pretrained.read(path)


def test_mismatch_error_says_what_each_side_is_and_counts(tmp_path):
  """A Ti/16 file into an S/16 model: one short line, not 150 shape pairs."""
  ti, s = (models.get_model(n, num_classes=10, num_layers=2)
           for n in ('Ti/16', 'S/16'))
  path = str(tmp_path / 'ti.npz')
  npz.save_npz(path, randomize(shapes(ti, 32)))
  with pytest.raises(pretrained.PretrainedError) as e:
    load(path, s, 32)
  msg = str(e.value)
  # 40 arrays (embedding 2, cls, posemb, 16 per block, final norm 2, head 2);
  # the head, whose input width differs, is re-initialized, not a mismatch:
  # 38 mismatches, the first 3 spelled out.
  assert '38 of 40 arrays do not fit' in msg, msg
  assert ('the file: width 192, 2 blocks, patch 16x16, head 10; the model: '
          'width 384, 2 blocks, patch 16x16, head 10') in msg
  assert msg.count('checkpoint has shape') == 3
  assert msg.endswith('; and 35 more'), msg
  assert len(msg) < 800 and '\n' not in msg
