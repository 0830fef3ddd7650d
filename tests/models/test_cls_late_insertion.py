"""CLS late insertion (`cls_insert_layer`, `cls_insert_mode`) vs known answers.

The reference is a float64 numpy ViT written here from the parameters alone
(pre-norm blocks: LayerNorm eps 1e-6, multi-head attention, tanh GELU MLP),
run step by step as Ghiasi et al.'s `experiments/it17/cls.py` does: the class
token alone through blocks 0..k-1, the patch tokens through them without it,
concatenated before block k, then the remaining blocks, final norm, token 0,
head. Tiny model: mu/16, 3 blocks, 2x2 patch grid.
"""

import functools

import jax
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models import intermediates
from vit_jax.models import vit

pytestmark = pytest.mark.usefixtures('fast_compile')

L = 3


@functools.cache  # one init for the file
def _setup():
  model = models.get_model('mu/16', num_classes=10, num_layers=L)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1,
                         maxval=1)
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  rng = np.random.RandomState(0)  # non-zero cls, head and norms
  params = jax.tree_util.tree_map(
      lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(p.dtype),
      params)
  return model, params, x


def _np(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _ln(x, p):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _block(p, x):
  """One pre-norm block on x [B, N, D] (every token attends to all N)."""
  a = p['MultiHeadDotProductAttention_1']
  y = _ln(x, p['LayerNorm_0'])
  q, k, v = (np.einsum('bnd,dhe->bnhe', y, a[n]['kernel']) + a[n]['bias']
             for n in ('query', 'key', 'value'))
  logits = np.einsum('bqhe,bkhe->bhqk', q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum('bhqk,bkhe->bqhe', w, v)
  x = x + np.einsum('bqhe,hed->bqd', o, a['out']['kernel']) + a['out']['bias']
  m = p['MlpBlock_3']
  h = _gelu_tanh(_ln(x, p['LayerNorm_2']) @ m['Dense_0']['kernel'] +
                 m['Dense_0']['bias'])
  return x + h @ m['Dense_1']['kernel'] + m['Dense_1']['bias']


def _reference(params, images, k, mode='alone'):
  """(logits [B, C], patch tokens after each block < k, class token before
  the final norm [B, D]) by the step-by-step protocol of the module doc."""
  p = _np(params)
  t = p['Transformer']
  img = np.asarray(images, np.float64)
  b = len(img)
  patches = img.reshape(b, 2, 16, 2, 16, 3).transpose(0, 1, 3, 2, 4, 5)
  x = (patches.reshape(b, 4, -1) @ p['embedding']['kernel'].reshape(-1, 32)
       + p['embedding']['bias'])
  pe = t['posembed_input']['pos_embedding']
  x = x + pe[:, 1:]
  cls = np.broadcast_to(p['cls'] + pe[:, :1], (b, 1, 32))
  early = []
  for i in range(k):
    x = _block(t[f'encoderblock_{i}'], x)
    early.append(x)
    if mode == 'alone':
      cls = _block(t[f'encoderblock_{i}'], cls)  # a one-token sequence
  x = np.concatenate([cls, x], axis=1)
  for i in range(k, L):
    x = _block(t[f'encoderblock_{i}'], x)
  logits = _ln(x, t['encoder_norm'])[:, 0] @ p['head']['kernel'] + p[
      'head']['bias']
  return logits, early, x[:, 0]


def test_reference_is_the_normal_model_at_k0():
  model, params, x = _setup()
  normal = model.apply({'params': params}, x)
  for mode in vit.CLS_INSERT_MODES:
    np.testing.assert_array_equal(
        model.apply({'params': params}, x, cls_insert_layer=0,
                    cls_insert_mode=mode), normal)
  np.testing.assert_allclose(normal, _reference(params, x, 0)[0], atol=2e-5)


def test_k_equals_L_is_the_class_token_alone_through_every_block():
  model, params, x = _setup()
  logits = model.apply({'params': params}, x, cls_insert_layer=L)
  # Independent 1: each block module applied on its own to [1, 1, D].
  t = params['Transformer']
  token = params['cls'] + t['posembed_input']['pos_embedding'][:, :1]
  for i in range(L):
    block = vit.EncoderBlock(mlp_dim=128, num_heads=2)
    token = block.apply({'params': t[f'encoderblock_{i}']}, token)
  # Independent 2: the numpy blocks.
  ref_logits, _, ref_token = _reference(params, x, L)
  np.testing.assert_allclose(token[0, 0], ref_token[0], atol=2e-5)
  expected = (_ln(np.asarray(token[0], np.float64),
                  _np(t['encoder_norm'])) @ np.asarray(params['head'][
                      'kernel'], np.float64) + np.asarray(params['head'][
                          'bias'], np.float64))
  np.testing.assert_allclose(logits, np.broadcast_to(expected, logits.shape),
                             atol=2e-5)
  np.testing.assert_allclose(logits, ref_logits, atol=2e-5)
  # The class token never meets the patches: the image does not matter.
  other = model.apply({'params': params}, -x[::-1] * 0.5, cls_insert_layer=L)
  np.testing.assert_allclose(other, logits, atol=1e-6)
  assert np.abs(logits - model.apply({'params': params}, x)).max() > 0.05
  # raw mode at k = L: the untouched token, final norm, head
  np.testing.assert_allclose(
      model.apply({'params': params}, x, cls_insert_layer=L,
                  cls_insert_mode='raw'),
      _reference(params, x, L, 'raw')[0], atol=2e-5)


@pytest.mark.parametrize('k', [1, 2])
def test_between_the_authors_protocol_step_by_step_and_not_raw(k):
  model, params, x = _setup()
  alone = model.apply({'params': params}, x, cls_insert_layer=k)
  raw = model.apply({'params': params}, x, cls_insert_layer=k,
                    cls_insert_mode='raw')
  np.testing.assert_allclose(alone, _reference(params, x, k)[0], atol=2e-5)
  np.testing.assert_allclose(raw, _reference(params, x, k, 'raw')[0],
                             atol=2e-5)
  assert np.abs(alone - raw).max() > 0.05


def test_patch_tokens_before_k_do_not_see_the_class_token():
  model, params, x = _setup()
  k = 2
  _, inter = intermediates.apply(model, params, x, cls_insert_layer=k)
  _, ref_early, _ = _reference(params, x, k)
  # (not a constant shift: the LayerNorms would remove it)
  changed = dict(params, cls=params['cls'] + jax.random.normal(
      jax.random.key(5), params['cls'].shape))
  _, inter_changed = intermediates.apply(model, changed, x,
                                         cls_insert_layer=k)
  _, inter_raw = intermediates.apply(model, params, x, cls_insert_layer=k,
                                     cls_insert_mode='raw')
  for i in range(k):  # blocks before k: the patch tokens' pass, [B, N, D]
    assert inter['tokens'][i].shape == (2, 4, 32)
    assert inter['attention'][i].shape == (2, 2, 4, 4)
    np.testing.assert_allclose(inter['tokens'][i], ref_early[i], atol=2e-5)
    np.testing.assert_array_equal(inter_changed['tokens'][i],
                                  inter['tokens'][i])
    np.testing.assert_array_equal(inter_raw['tokens'][i], inter['tokens'][i])
  assert inter['tokens'][k].shape == (2, 5, 32)
  assert np.abs(inter_changed['tokens'][k][:, 1:] -
                inter['tokens'][k][:, 1:]).max() > 1e-3


def test_out_of_range_and_unknown_mode_are_one_line_errors():
  model, params, x = _setup()
  with pytest.raises(ValueError, match=r'^cls_insert_layer=4 is out of range '
                     r'\[0, 3\]'):
    model.apply({'params': params}, x, cls_insert_layer=4)
  with pytest.raises(ValueError, match=r'cls_insert_layer=-1 is out of range'):
    model.apply({'params': params}, x, cls_insert_layer=-1)
  with pytest.raises(ValueError, match=r"cls_insert_mode='late'; allowed: "
                     'alone, raw'):
    model.apply({'params': params}, x, cls_insert_layer=1,
                cls_insert_mode='late')
  gap = models.get_model('mu/16', num_classes=10, classifier='gap')
  gp = jax.jit(gap.init)(jax.random.key(0), x)['params']
  with pytest.raises(ValueError, match='cls_insert_layer=1 needs a class '
                     'token'):
    gap.apply({'params': gp}, x, cls_insert_layer=1)
