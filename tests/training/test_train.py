"""Tests of vit_jax.training.train: one step under every mesh layout, gradient
accumulation, interrupt-and-resume, pretrained init, 2-process runs."""

import json
import os

import jax
import numpy as np
import pytest
import scipy.ndimage

from tests.conftest import read_scalars
from tests.tiny_configs import train_config
from vit_jax.data import device_data
from vit_jax.training import train

# Compile time dominates these tiny models on CPU (conftest fixture).
pytestmark = pytest.mark.usefixtures('fast_compile')

# (data, fsdp, tensor) layouts of the 8 forced host devices.
LAYOUTS = {
    'dp8': dict(data=8, fsdp=1, tensor=1),
    'fsdp8': dict(data=1, fsdp=8, tensor=1),
    'dp4_tp2': dict(data=4, fsdp=1, tensor=2),
    'dp2_fsdp2_tp2': dict(data=2, fsdp=2, tensor=2),
}


def one_step(config, devices, workdir):
  s = train.setup(config, str(workdir), devices)
  state = s.init_fn()
  batch = device_data.to_global(next(s.train_batches(0)), s.batch_sharding)
  new_state, m = train.make_train_step(s)(state, batch)
  return s, new_state, jax.device_get(m)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One step on a single device."""
  config = train_config()
  was = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    _, state, m = one_step(config, jax.devices()[:1],
                           tmp_path_factory.mktemp('ref'))
  finally:
    jax.config.update('jax_disable_most_optimizations', was)
  return jax.device_get(state.params), float(m['loss'])


def assert_trees_close(a, b, atol=1e-5):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol,
                               rtol=1e-5)


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_one_step_same_on_8_devices(layout, reference, tmp_path):
  assert jax.device_count() == 8
  params_1, loss_1 = reference
  config = train_config(mesh=LAYOUTS[layout])
  s, state, m = one_step(config, jax.devices(), tmp_path)
  assert dict(s.mesh.shape) == LAYOUTS[layout]
  # The layout is really used: parameters are split as the rules say.
  specs = {str(p): sh.spec for p, sh in
           jax.tree_util.tree_leaves_with_path(s.state_shardings.params)}
  qk = [v for k, v in specs.items() if 'query' in k and 'kernel' in k][0]
  mlp = [v for k, v in specs.items() if 'Dense_0' in k and 'kernel' in k][0]
  if LAYOUTS[layout]['tensor'] > 1:
    assert qk[1] == 'tensor' and mlp[1] == 'tensor'
  if LAYOUTS[layout]['fsdp'] > 1:
    assert 'fsdp' in tuple(mlp)
  leaf = state.params['Transformer']['encoderblock_0']['MlpBlock_3'][
      'Dense_0']['kernel']
  assert leaf.sharding.spec == mlp
  # Same numbers as on one device.
  assert abs(float(m['loss']) - loss_1) < 1e-5
  assert_trees_close(jax.device_get(state.params), params_1)
  # And the step did something.
  init = jax.device_get(s.init_fn().params)
  moved = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in
              zip(jax.tree.leaves(init), jax.tree.leaves(params_1)))
  assert moved > 1e-4


def test_gradient_accumulation_equals_big_batch(reference, tmp_path):
  params_1, loss_1 = reference
  config = train_config(accum_steps=4, mesh=LAYOUTS['dp2_fsdp2_tp2'])
  _, state, m = one_step(config, jax.devices(), tmp_path)
  assert abs(float(m['loss']) - loss_1) < 1e-5
  assert_trees_close(jax.device_get(state.params), params_1)


def test_perf_microbatches_equal_one_batch(reference, tmp_path):
  """Independent micro-batches (config.perf.microbatches) change nothing but the
  summation order, also with dropout on (masks folded per micro-batch)."""
  one = jax.devices()[:1]

  def config(k, dropout):
    c = train_config(**{'perf.microbatches': k})
    if dropout:
      with c.unlocked():
        c.model.dropout_rate = dropout
    return c

  params_1, loss_1 = reference  # one micro-batch, no dropout
  _, s4, m4 = one_step(config(4, 0.0), one, tmp_path / 'a')
  assert abs(loss_1 - float(m4['loss'])) < 1e-5
  assert_trees_close(params_1, jax.device_get(s4.params))
  # Different dropout masks: close, not equal.
  _, _, m1 = one_step(config(1, 0.1), one, tmp_path / 'b')
  _, _, m4 = one_step(config(4, 0.1), one, tmp_path / 'c')
  assert abs(float(m1['loss']) - float(m4['loss'])) < 0.1
  assert float(m1['loss']) != float(m4['loss'])


def test_adamw_step_same_on_8_devices(tmp_path):
  kw = {'optim.name': 'adamw', 'optim.base_lr': 1e-3,
        'optim.weight_decay': 0.1}
  _, s1, m1 = one_step(train_config(**kw), jax.devices()[:1], tmp_path / 'a')
  _, s8, m8 = one_step(train_config(mesh=LAYOUTS['dp2_fsdp2_tp2'], **kw),
                       jax.devices(), tmp_path / 'b')
  assert abs(float(m1['loss']) - float(m8['loss'])) < 1e-5
  assert_trees_close(jax.device_get(s1.params), jax.device_get(s8.params))


def test_interrupt_and_resume_equals_straight_run(tmp_path):
  """N steps, stop, restart with the same workdir, N more == 2N straight."""
  n = 3
  config = train_config(total_steps=2 * n, checkpoint_every=100)
  config.async_checkpoints = True
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'),
                                      devices=jax.devices()[:1])
  assert straight['step'] == 2 * n

  workdir = str(tmp_path / 'resumed')
  first = train.train_and_evaluate(config, workdir, devices=jax.devices()[:1],
                                   stop_after=n)
  assert first['step'] == n
  assert sorted(os.listdir(f'{workdir}/checkpoints')) == [str(n)]
  # Resume on a different mesh: checkpoints are layout-independent.
  config.mesh.data, config.mesh.fsdp = 4, 2
  second = train.train_and_evaluate(config, workdir, devices=jax.devices())
  assert second['step'] == 2 * n
  assert min(second['train_losses']) == n + 1  # continued, not restarted

  losses = {**first['train_losses'], **second['train_losses']}
  assert sorted(losses) == list(range(1, 2 * n + 1))
  for k in losses:
    assert abs(losses[k] - straight['train_losses'][k]) < 1e-5, k
  assert_trees_close(jax.device_get(second['state'].params),
                     jax.device_get(straight['state'].params))
  assert_trees_close(jax.device_get(second['state'].opt_state),
                     jax.device_get(straight['state'].opt_state))
  np.testing.assert_array_equal(np.asarray(second['state'].rng),
                                np.asarray(straight['state'].rng))


def test_training_learns_and_writes_outputs(tmp_path):
  config = train_config(total_steps=30, eval_every=15, checkpoint_every=10,
                        keep_checkpoints=2)
  config.optim.base_lr = 0.1
  out = train.train_and_evaluate(config, str(tmp_path),
                                 devices=jax.devices()[:1])
  losses = out['train_losses']
  assert np.mean([losses[k] for k in (28, 29, 30)]) < losses[1] - 0.3
  assert out['eval']['top1'] > 0.5  # 10 classes: chance is 0.1
  assert out['eval']['count'] == 200
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['20', '30']
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['total_steps'] == 30
  events = read_scalars(tmp_path)
  assert sorted(events['train/loss']) == list(range(1, 31))
  assert abs(events['train/loss'][30] - losses[30]) < 1e-6
  assert set(events['eval/top1']) == {15, 30}


def test_pretrained_npz_init_resamples_and_zeroes_head(tmp_path):
  from vit_jax.checkpoints import npz  # pylint: disable=g-import-not-at-top
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  # A 'pre-trained' mu/16 at 64 px (16 tokens) with a 7-class head.
  src = models.get_model('mu/16', num_classes=7)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                        src.init(jax.random.PRNGKey(1),
                                 np.zeros((1, 64, 64, 3)))['params'])
  path = str(tmp_path / 'src.npz')
  npz.save_npz(path, params)
  config = train_config(pretrained_path=path, image_size=32)
  s = train.setup(config, str(tmp_path / 'wd'), jax.devices()[:1])
  state = s.restore_or_init()
  got = jax.device_get(state.params)
  np.testing.assert_array_equal(got['Transformer']['encoderblock_1'][
      'MlpBlock_3']['Dense_0']['kernel'], params['Transformer'][
          'encoderblock_1']['MlpBlock_3']['Dense_0']['kernel'])
  pe = got['Transformer']['posembed_input']['pos_embedding']
  assert pe.shape == (1, 1 + 4, 32)
  # The official resampling (linear, corner-aligned) of a 4x4 grid to 2x2
  # samples input rows/columns 0 and 3 exactly: the four corners. The class
  # token's row is kept.
  src = params['Transformer']['posembed_input']['pos_embedding']
  corners = src[0, 1:].reshape(4, 4, 32)[[0, 3]][:, [0, 3]]
  np.testing.assert_array_equal(pe[0, 0], src[0, 0])
  np.testing.assert_allclose(pe[0, 1:], corners.reshape(4, 32), atol=1e-6)
  assert got['head']['kernel'].shape == (32, 10)
  assert not np.any(got['head']['kernel'])


def test_pretrained_from_our_checkpoint_at_higher_resolution(tmp_path):
  """Orbax checkpoint saved FSDP-sharded on 8 devices -> init at 64 px on 1."""
  config = train_config(total_steps=2, mesh=LAYOUTS['fsdp8'])
  src = train.train_and_evaluate(config, str(tmp_path / 'src'))
  src_params = jax.device_get(src['state'].params)
  config = train_config(pretrained_path=str(tmp_path / 'src'), image_size=64)
  s = train.setup(config, str(tmp_path / 'dst'), jax.devices()[:1])
  got = jax.device_get(s.restore_or_init().params)
  assert int(s.restore_or_init().step) == 0  # a new run, not a resume
  k = ('Transformer', 'encoderblock_0', 'MlpBlock_3', 'Dense_0', 'kernel')
  a, b = got, src_params
  for key in k:
    a, b = a[key], b[key]
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got['head']['kernel'],
                                src_params['head']['kernel'])  # same classes
  pe = got['Transformer']['posembed_input']['pos_embedding']
  assert pe.shape == (1, 1 + 16, 32)  # 2x2 -> 4x4 grid, class token kept
  src = src_params['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_array_equal(pe[:, :1], src[:, :1])
  # Linear, corner-aligned: the 4x4 grid's corners are the 2x2 grid, and
  # its row 1 is 2/3 of row 0 plus 1/3 of row 1 of the 2x2 (scipy's zoom,
  # the official resampling, computed independently).
  big, small = pe[0, 1:].reshape(4, 4, 32), src[0, 1:].reshape(2, 2, 32)
  np.testing.assert_allclose(big[[0, 3]][:, [0, 3]], small, atol=1e-6)
  np.testing.assert_allclose(big, scipy.ndimage.zoom(small, (2, 2, 1),
                                                     order=1), atol=1e-6)
  np.testing.assert_allclose(big[1, 0], (2 * small[0, 0] + small[1, 0]) / 3,
                             atol=1e-6)
