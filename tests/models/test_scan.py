"""Scanned blocks (`scan_layers`) and remat policies vs the unrolled model.

The unrolled model is the reference (it matches the official code's logits,
tests/models/test_official_golden.py); here a scanned model, holding the
same parameters stacked [L, ...], must give the same logits, gradients,
intermediates and `.npz` files, and the released ViT-Ti/16 must give the
official logits through the scanned model as well.
"""

import functools
import json

import jax
import jax.extend.core  # noqa: F401  (Var)
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden_inputs
from tests.conftest import REPO
from vit_jax import config_lib
from vit_jax import models
from vit_jax.analysis import modelinfo
from vit_jax.analysis import validate
from vit_jax.checkpoints import npz
from vit_jax.checkpoints import pretrained
from vit_jax.models import intermediates
from vit_jax.models import scan

pytestmark = pytest.mark.usefixtures('fast_compile')

TOL = dict(rtol=1e-5, atol=1e-5)
L = 3


@functools.cache
def _setup(name='mu/16', **kw):
  """(unrolled model, scanned model, per-block params, stacked params, x);
  ViTs with L blocks, Mixers with 2."""
  if not name.startswith('Mixer'):
    kw.setdefault('num_layers', L)
  model = models.get_model(name, num_classes=10, **kw)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1,
                         maxval=1)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  rng = np.random.RandomState(0)  # random weights of init's scale
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.3, s.dtype),
      shapes)
  scanned = model.clone(scan_layers=True)
  layout = scan.flatten(jax.eval_shape(scanned.init, jax.random.key(0),
                                       x)['params'])
  stacked = scan.unflatten(scan.to_layout(scan.flatten(params), layout))
  return model, scanned, params, stacked, x


def _loss(model, x, **kw):
  def loss(params):
    y = model.apply({'params': params}, x, **kw)
    return jnp.sum(jnp.sin(3 * y)), y  # every logit matters, with its sign
  return loss


@functools.cache
def _traced(name='mu/16', scanned=False, policy='none', k=0, mode='alone',
            **kw):
  """(value and gradient of the loss, traced for jit; its parameters) of
  one configuration."""
  model, scanned_model, params, stacked, x = _setup(name, **kw)
  model, params = ((scanned_model, stacked) if scanned else (model, params))
  model = model.clone(remat_policy=policy)
  call = dict(cls_insert_layer=k, cls_insert_mode=mode) if k else {}
  return jax.jit(jax.value_and_grad(_loss(model, x, **call),
                                    has_aux=True)).trace(params), params


@functools.cache
def _run(*args, **kw):
  """(logits, gradients as a flat per-block dict) of one configuration
  (`_traced`'s arguments); one compile each, shared between the tests."""
  traced, params = _traced(*args, **kw)
  (_, y), g = traced.lower().compile()(params)
  g = jax.tree.map(np.asarray, g)
  return np.asarray(y), scan.flatten(scan.unstack_tree(g))


def _assert_flat_close(got, want):
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]),
                               err_msg=k, **TOL)


def test_scanned_init_has_the_stacked_layout_and_distinct_layers():
  _, scanned, params, stacked, _ = _setup()
  # the init of a run without a checkpoint (the program modelinfo.load
  # compiles too: test_analyses_get_the_unrolled_form)
  model, init = pretrained.load_model('mu/16', None, (32, 32), 10,
                                      scan_layers=True, num_layers=L)
  assert model == scanned
  flat = scan.flatten(init)
  assert ({k: np.shape(v) for k, v in flat.items()} ==
          {k: np.shape(v) for k, v in scan.flatten(stacked).items()})
  # blocks 0..L-2 stacked, the last block on its own
  assert np.shape(flat['Transformer/encoderblock/LayerNorm_0/scale']) == (
      L - 1, 32)
  assert f'Transformer/encoderblock_{L - 1}/LayerNorm_0/scale' in flat
  assert not any(f'encoderblock_{i}/' in k for k in flat for i in range(L - 1))
  assert sorted(scan.flatten(scan.unstack_tree(init))) == sorted(
      scan.flatten(params))
  k = 'Transformer/encoderblock/MlpBlock_3/Dense_0/kernel'  # [L-1, 32, 128]
  assert not np.allclose(flat[k][0], flat[k][1])  # a random draw per layer
  # each layer as xavier_uniform: std sqrt(2 / (fan_in + fan_out))
  for w in (*flat[k], flat[k.replace('encoderblock', f'encoderblock_{L-1}')]):
    assert abs(float(np.std(w)) - np.sqrt(2 / (32 + 128))) < 0.01


def test_scanned_model_compiles_one_block_per_segment():
  _, scanned, _, stacked, x = _setup()
  flat = scan.flatten(stacked)
  keys = sorted(flat)
  jaxpr = jax.make_jaxpr(lambda *p: scanned.apply(
      {'params': scan.unflatten(dict(zip(keys, p)))}, x))(
          *[flat[k] for k in keys]).jaxpr
  scans = [e for e in jaxpr.eqns if e.primitive.name == 'scan']
  # blocks 0..L-2 as one scan; the last block apart (class token only)
  assert [e.params['length'] for e in scans] == [L - 1]
  # which reads the stacked parameters as they are (no slice, no copy)
  stacked_in = {v for v, k in zip(jaxpr.invars, keys)
                if k.startswith('Transformer/encoderblock/')}
  assert len(stacked_in) == 16 and stacked_in <= set(scans[0].invars)
  assert not [e for e in jaxpr.eqns if e is not scans[0] and
              any(v in stacked_in for v in e.invars
                  if isinstance(v, jax.extend.core.Var))]


def test_flops_count_the_same_on_scanned():
  from vit_jax.perf import flops  # pylint: disable=g-import-not-at-top
  model, scanned, _, _, _ = _setup()
  n = flops.forward_flops(model, (32, 32))
  assert n > 0 and flops.forward_flops(scanned, (32, 32)) == n


@pytest.mark.parametrize('kw', [{}, dict(classifier='gap')])
def test_same_logits_and_gradients(kw):
  """Class token (blocks 0..L-2 scanned, the last block on the class token
  alone) and gap (all blocks in one scan)."""
  y, g = _run(**kw)
  y_s, g_s = _run(scanned=True, **kw)
  np.testing.assert_allclose(y_s, y, **TOL)
  assert np.abs(g['head/kernel']).max() > 1e-3
  _assert_flat_close(g_s, g)


@pytest.mark.parametrize('policy', scan.REMAT_POLICIES[1:])
@pytest.mark.parametrize('scanned', [False, True])
def test_each_remat_policy_gives_the_gradients_of_none(policy, scanned):
  # The policy reaches the backward pass: remat in the gradient's jaxpr,
  # each policy's jaxpr its own.
  jaxpr = lambda p: str(_traced(scanned=scanned, policy=p)[0].jaxpr)
  assert 'remat' in jaxpr(policy) or 'checkpoint' in jaxpr(policy)
  assert 'remat' not in jaxpr('none')
  assert all(jaxpr(policy) != jaxpr(p)
             for p in scan.REMAT_POLICIES[1:] if p != policy)
  # Gradients: every policy goes through the same wrapper of a layout
  # (`scan.rematted` per block; `nn.remat` inside the scan, and on the last
  # block), compared with one policy per layout.
  if policy == ('nothing_saveable' if scanned else 'dots_saveable'):
    _assert_flat_close(_run(scanned=scanned, policy=policy)[1],
                       _run(scanned=scanned)[1])


def test_boolean_remat_is_nothing_saveable():
  assert scan.remat_policy('none', remat=True) == 'nothing_saveable'
  assert scan.remat_policy('none') is None
  model, _, params, _, x = _setup()
  # the same computation, gradients included, as the policy's: the same
  # jaxpr (its gradients: test_each_remat_policy_gives_the_gradients_of_none)
  boolean = jax.jit(jax.value_and_grad(_loss(model.clone(remat=True), x),
                                       has_aux=True)).trace(params)
  assert str(boolean.jaxpr) == str(
      _traced(policy='nothing_saveable')[0].jaxpr)
  with pytest.raises(ValueError, match=r"remat=True .* contradicts "
                     r"remat_policy='dots_saveable'"):
    jax.eval_shape(model.clone(remat=True, remat_policy='dots_saveable').init,
                   jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"remat_policy='all'; allowed: none, "
                     r'nothing_saveable, dots_saveable'):
    jax.eval_shape(model.clone(remat_policy='all').init, jax.random.key(0), x)


@pytest.mark.parametrize('k,mode', [(1, 'raw'), (2, 'alone')])
def test_cls_insertion_same_on_scanned(k, mode):
  y, g = _run(k=k, mode=mode)
  assert not np.allclose(y, _run()[0], atol=1e-3)  # the probe changes it
  y_s, g_s = _run(scanned=True, k=k, mode=mode)
  np.testing.assert_allclose(y_s, y, **TOL)
  _assert_flat_close(g_s, g)


@pytest.mark.parametrize('k', [0, 2])
def test_intermediates_same_on_scanned(k):
  model, scanned, params, stacked, x = _setup()
  kw = dict(cls_insert_layer=k)
  y, want = jax.jit(functools.partial(intermediates.apply, model, **kw))(
      params, x)
  y_s, got = jax.jit(functools.partial(intermediates.apply, scanned, **kw))(
      stacked, x)
  np.testing.assert_allclose(y_s, y, **TOL)
  assert sorted(got) == sorted(want)
  for name in ('tokens', 'attention', 'mlp_hidden'):
    assert len(got[name]) == len(want[name]) == L
    for i, (a, b) in enumerate(zip(got[name], want[name])):
      assert a.shape == b.shape, (name, i)
      np.testing.assert_allclose(a, b, err_msg=f'{name}[{i}]', **TOL)
  np.testing.assert_allclose(got['pre_logits'], want['pre_logits'], **TOL)
  if k:  # blocks before k saw the 4 patch tokens only, as unrolled
    assert got['attention'][0].shape[-1] == 4
    assert got['attention'][k].shape[-1] == 5


def test_mixer_same_logits_gradients_intermediates_and_remat():
  model, scanned, params, stacked, x = _setup('Mixer-mu_16')
  assert np.shape(scan.flatten(stacked)[
      'MixerBlock/token_mixing/Dense_0/kernel'])[0] == 2
  y, g = _run('Mixer-mu_16')
  y_s, g_s = _run('Mixer-mu_16', scanned=True)
  np.testing.assert_allclose(y_s, y, **TOL)
  _assert_flat_close(g_s, g)
  _assert_flat_close(_run('Mixer-mu_16', scanned=True,
                          policy='dots_saveable')[1], g)
  _, want = jax.jit(functools.partial(intermediates.apply, model))(params, x)
  _, got = jax.jit(functools.partial(intermediates.apply, scanned))(stacked,
                                                                     x)
  assert len(got['tokens']) == 2
  for a, b in zip(got['tokens'], want['tokens']):
    np.testing.assert_allclose(a, b, **TOL)


def test_npz_from_scanned_is_the_unrolled_file_bit_for_bit(tmp_path):
  for name in ('mu/16', 'Mixer-mu_16'):
    _, _, params, stacked, _ = _setup(name)
    a, b = tmp_path / 'unrolled.npz', tmp_path / 'scanned.npz'
    npz.save_npz(str(a), params)
    npz.save_npz(str(b), stacked)
    with np.load(a) as fa, np.load(b) as fb:
      assert sorted(fa.files) == sorted(fb.files)
      assert any('_1/' in k for k in fb.files)  # per-block keys
      for k in fa.files:
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_loading_converts_layouts_both_ways(tmp_path):
  model, scanned, params, stacked, x = _setup()
  path = str(tmp_path / 'p.npz')
  npz.save_npz(path, params)
  init = jax.eval_shape(scanned.init, jax.random.key(0), x)['params']
  fitted = pretrained.fit(scanned, init, pretrained.read(path))
  for k, v in scan.flatten(stacked).items():
    np.testing.assert_array_equal(scan.flatten(fitted)[k], v, err_msg=k)
  # a stacked tree (a scanned workdir's params) into the unrolled model
  back = npz.merge(params, stacked)
  for k, v in scan.flatten(params).items():
    np.testing.assert_array_equal(scan.flatten(back)[k], v, err_msg=k)
  # a checkpoint with fewer blocks: one line naming the key and both shapes
  small = models.get_model('mu/16', num_classes=10, num_layers=2)
  npz.save_npz(path, jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype),
      jax.eval_shape(small.init, jax.random.key(0), x)['params']))
  with pytest.raises(pretrained.PretrainedError,
                     match=r'missing in checkpoint: .*encoderblock_2/') as e:
    pretrained.fit(scanned, init, pretrained.read(path))
  assert '\n' not in str(e.value)


def test_stack_and_unstack_errors_are_one_line():
  flat = {'T/encoderblock_0/w': np.ones(2), 'T/encoderblock_2/w': np.ones(2)}
  with pytest.raises(ValueError, match=r'T/encoderblock: block numbers '
                     r'\[0, 2\] do not cover 0..1'):
    scan.stack(flat)
  flat = {'T/encoderblock_0/w': np.ones(2), 'T/encoderblock_1/w': np.ones(3)}
  with pytest.raises(ValueError, match=r'T/encoderblock_\*/w: shapes'):
    scan.stack(flat)
  flat = {'T/encoderblock_0/w': np.ones(2), 'T/encoderblock_1/v': np.ones(2)}
  with pytest.raises(ValueError, match='block 1 and block 0 hold different'):
    scan.stack(flat)
  flat = {'T/encoderblock/w': np.ones((3, 2)), 'T/encoderblock/v': np.ones(2)}
  with pytest.raises(ValueError, match=r'T/encoderblock/\S+: leading axis'):
    scan.unstack(flat)
  # round trip, other keys untouched
  flat = {'T/encoderblock_0/w': np.arange(2.), 'T/encoderblock_1/w':
          np.arange(2.) + 5, 'head/kernel': np.ones(1)}
  st = scan.stack(flat)
  assert sorted(st) == ['T/encoderblock/w', 'head/kernel']
  np.testing.assert_array_equal(st['T/encoderblock/w'], [[0, 1], [5, 6]])
  assert scan.unstack(st).keys() == flat.keys()
  # a stack of the first blocks, later blocks on their own (a scanned ViT)
  st = scan.stack(flat, {'T/encoderblock': 1})
  assert sorted(st) == ['T/encoderblock/w', 'T/encoderblock_1/w',
                        'head/kernel']
  assert np.shape(st['T/encoderblock/w']) == (1, 2)
  assert scan.unstack(st).keys() == flat.keys()
  np.testing.assert_array_equal(
      scan.to_layout(scan.stack(flat), st)['T/encoderblock_1/w'], [5, 6])
  with pytest.raises(ValueError, match=r'T/encoderblock_0/w: the block is '
                     'both stacked and on its own'):
    scan.unstack({**st, 'T/encoderblock_0/w': np.ones(2)})


def test_released_ti16_through_the_scanned_model(shared_data):
  """The released file (per block) loads into a scanned ViT-Ti/16 and gives
  the official code's logits, as the unrolled model does
  (tests/models/test_official_golden.py)."""
  case = 'ViT-Ti_16@224'
  c = golden_inputs.CASES[case]
  u8 = golden_inputs.load_photos(shared_data / 'imagenet_samples',
                                 golden_inputs.PHOTOS[:2], c['size'])
  x = golden_inputs.to_model_input(u8)
  restored = pretrained.read(str(shared_data / 'checkpoints' /
                                 c['checkpoint']))
  model = models.get_model(c['model'], scan_layers=True)
  init = jax.eval_shape(model.init, jax.random.key(0),
                        jnp.zeros((1, 224, 224, 3)))['params']
  params = pretrained.fit(model, init, restored, (224, 224))
  flat = scan.flatten(params)
  assert np.shape(flat['Transformer/encoderblock/LayerNorm_0/scale']) == (
      11, 192)  # blocks 0..10 stacked, block 11 on its own
  assert not any('encoderblock_0/' in k for k in flat)
  logits = np.asarray(jax.jit(model.apply)({'params': params}, x))
  official = json.loads((REPO / 'tests' / 'fixtures' / 'official' /
                         'golden_logits.json').read_text())[case]
  np.testing.assert_allclose(logits, np.asarray(official)[:2], atol=1e-4)


def test_analyses_get_the_unrolled_form(tmp_path):
  unrolled, scanned, params, _, _ = _setup()
  path = str(tmp_path / 'p.npz')
  npz.save_npz(path, params)
  model, loaded = modelinfo.load('mu/16', path, (32, 32),
                                 scan_layers=True, num_layers=L)
  # the unrolled model with the file's parameters as they are: the function
  # test_same_logits_and_gradients finds equal to the scanned model's
  assert model == unrolled.clone(**modelinfo.run_hooks('mu/16'))
  flat, want = scan.flatten(loaded), scan.flatten(params)
  assert sorted(flat) == sorted(want)
  for k, v in want.items():
    assert flat[k].dtype == v.dtype, k
    np.testing.assert_array_equal(flat[k], v, err_msg=k)
  assert not scan.is_scanned(modelinfo.build('mu/16', scan_layers=True))
  with pytest.raises(validate.AnalysisError, match='truncate needs the '
                     'unrolled form'):
    modelinfo.truncate(scanned, 1)


def test_dropout_on_a_scanned_model():
  _, scanned, _, stacked, x = _setup()
  drop = scanned.clone(dropout_rate=0.5)
  f = jax.jit(lambda r: drop.apply({'params': stacked}, x, train=True,
                                   rngs={'dropout': jax.random.key(r)}))
  np.testing.assert_array_equal(f(0), f(0))
  assert not np.allclose(f(0), f(1))
  assert not np.allclose(f(0), _run(scanned=True)[0])


def test_config_keys_are_validated():
  from configs import vit  # pylint: disable=g-import-not-at-top
  c = vit.get_config('mu16,synthetic')
  assert c.model.scan_layers is False and c.model.remat_policy == 'none'
  c.model.scan_layers = True
  c.model.remat_policy = 'dots_saveable'
  config_lib.validate(c, 8)
  c.model.remat_policy = 'everything'
  with pytest.raises(ValueError, match=r"config.model.remat_policy="
                     r"'everything'; allowed: none, nothing_saveable") as e:
    config_lib.validate(c, 8)
  assert '\n' not in str(e.value)
  assert 'scan_layers' in vit.get_config('mixer_b16,cifar10').model
  assert 'scan_layers' not in vit.get_config('bit_r26,cifar10').model
