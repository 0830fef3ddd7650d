"""Tests of vit_jax.training.sharding: mesh sizes, rules -> PartitionSpecs, sharded
state creation (no full copy), and mesh errors."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vit_jax import models
from vit_jax.training import sharding


def mesh_cfg(**kw):
  return ml_collections.ConfigDict(dict(dict(data=-1, fsdp=1, tensor=1),
                                        **kw))


def test_mesh_shape_fills_minus_one():
  assert sharding.mesh_shape(mesh_cfg(), 8) == dict(data=8, fsdp=1, tensor=1)
  assert sharding.mesh_shape(mesh_cfg(tensor=2), 8) == dict(
      data=4, fsdp=1, tensor=2)
  assert sharding.mesh_shape(mesh_cfg(data=2, fsdp=-1, tensor=2), 8) == dict(
      data=2, fsdp=2, tensor=2)


@pytest.mark.parametrize('kw, match', [
    (dict(data=3), r'needs 3 devices, there are 8'),
    (dict(tensor=3), r'8 devices are not divisible by 3'),
    (dict(data=-1, fsdp=-1), r'at most one axis may be -1'),
])
def test_mesh_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    sharding.mesh_shape(mesh_cfg(**kw), 8)


def test_unknown_mesh_axis():
  c = mesh_cfg()
  c.pipeline = 2
  with pytest.raises(ValueError, match=r"unknown axis \['pipeline'\]; "
                     r'allowed: data, fsdp, tensor'):
    sharding.mesh_shape(c, 8)


def test_make_mesh_axes():
  mesh = sharding.make_mesh(mesh_cfg(data=2, fsdp=2, tensor=2))
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2)
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


SIZES = dict(data=2, fsdp=2, tensor=2)
RULES = sharding.RULES['default']


@pytest.mark.parametrize('path, shape, spec', [
    # tensor-parallel rules (fsdp then takes another free dimension)
    ('params/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/'
     'query/kernel', (192, 4, 48), P('fsdp', 'tensor', None)),
    ('params/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/'
     'out/kernel', (4, 48, 192), P('tensor', None, 'fsdp')),
    ('params/Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel',
     (192, 768), P('fsdp', 'tensor')),
    ('params/Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias', (768,),
     P('tensor')),
    # the same rule reaches the optimizer state by path
    ('opt_state/1/0/trace/Transformer/encoderblock_3/MlpBlock_3/Dense_1/'
     'kernel', (768, 192), P('tensor', 'fsdp')),
    # small leaves stay replicated; non-divisible axes are dropped
    ('params/Transformer/encoder_norm/scale', (192,), P(None)),
    ('params/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/'
     'query/kernel', (32, 3, 16), P(None, None, None)),
    ('step', (), P()),
    ('params/embedding/kernel', (16, 16, 3, 192), P(None, None, None,
                                                    'fsdp')),
])
def test_leaf_spec(path, shape, spec):
  assert sharding.leaf_spec(path, shape, RULES, SIZES) == spec


def test_replicated_rules_and_fsdp_off():
  sizes = dict(data=8, fsdp=1, tensor=1)
  path = 'params/Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'
  assert sharding.leaf_spec(path, (192, 768), RULES, sizes) == P(None, None)
  assert sharding.leaf_spec(path, (192, 768), (), SIZES) == P(None, 'fsdp')


def test_unknown_rule_set():
  mesh = sharding.make_mesh(mesh_cfg())
  with pytest.raises(ValueError, match=r"partition_rules='megatron'; "
                     r'allowed: default, replicated'):
    sharding.tree_shardings({}, mesh, 'megatron')


def test_params_created_sharded():
  """jit(init, out_shardings) puts 1/n of each sharded kernel per device."""
  mesh = sharding.make_mesh(mesh_cfg(data=2, fsdp=2, tensor=2))
  model = models.get_model('Ti/16', num_classes=10, num_layers=1)
  init = lambda: model.init(jax.random.PRNGKey(0),
                            np.zeros((1, 32, 32, 3), np.float32))['params']
  shapes = jax.eval_shape(init)
  shardings = sharding.tree_shardings(shapes, mesh)
  params = jax.jit(init, out_shardings=shardings)()
  k = params['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0'][
      'kernel']
  assert k.shape == (192, 768)
  assert {s.data.shape for s in k.addressable_shards} == {(96, 384)}
  assert k.sharding.spec == P('fsdp', 'tensor')
  # Values equal an unsharded init.
  ref = jax.jit(init)()
  np.testing.assert_array_equal(np.asarray(k), np.asarray(
      ref['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0'][
          'kernel']))
