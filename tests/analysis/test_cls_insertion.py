"""Tests of the CLS late-insertion probe (`vit_jax.analysis.cls_insertion`).

Model-level known answers (numpy reference) are in
tests/models/test_cls_late_insertion.py; here: the top-1 sweep, the request
checks, and the released ViT-Ti/16 on real photos against timm's blocks run
by hand in the authors' protocol.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.analysis import cls_insertion
from vit_jax.analysis import data
from vit_jax.analysis import evaluation
from vit_jax.analysis import validate
from vit_jax.checkpoints import npz


def test_top1_by_layer_known_answers_at_0_and_L(fast_compile):
  del fast_compile
  model = models.get_model('mu/16', num_classes=4)  # 2 blocks
  params = jax.jit(model.init)(jax.random.key(0),
                               jnp.zeros((1, 32, 32, 3)))['params']
  params['head']['kernel'] = jax.random.normal(jax.random.key(2),
                                               params['head']['kernel'].shape)
  params['cls'] = jax.random.normal(jax.random.key(3), params['cls'].shape)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
  normal = evaluation.Evaluator(model, params, batch_size=4).logits(images)
  labels = normal.argmax(-1)
  res = cls_insertion.top1_by_layer(model, params, images, labels,
                                    batch_size=4)
  assert sorted(res) == [0, 1, 2]  # default: every k = 0..L
  assert res[0] == 1.0  # labels are the normal model's predictions
  # k = L: the class token never meets the patches, so every image gets the
  # same class and top-1 is the share of labels equal to it.
  alone_class = evaluation.Evaluator(model, params, 4, cls_insert_layer=2
                                     ).logits(images[:1])[0].argmax()
  assert res[2] == np.mean(labels == alone_class)
  # mode 'raw' at k = L: head(LayerNorm(cls + position row 0)), by hand
  t = jax.tree_util.tree_map(np.asarray, params['Transformer'])
  token = np.asarray(params['cls'])[0, 0] + t['posembed_input'][
      'pos_embedding'][0, 0]
  ln = t['encoder_norm']
  token = ((token - token.mean()) / np.sqrt(token.var() + 1e-6) * ln['scale']
           + ln['bias'])
  raw_class = (token @ np.asarray(params['head']['kernel']) +
               np.asarray(params['head']['bias'])).argmax()
  assert raw_class != alone_class  # so that the mode visibly matters
  raw_labels = np.full(len(images), raw_class)
  assert cls_insertion.top1(model, params, images, raw_labels, 2, 'raw',
                            batch_size=4) == 1.0


def test_errors():
  model = models.get_model('mu/16', num_classes=4)  # 2 blocks
  assert cls_insertion.check(model, [0, 1, 2]) == [0, 1, 2]
  with pytest.raises(validate.AnalysisError,
                     match=r'insertion layer 3 is out of range: allowed 0\.\.2'):
    cls_insertion.check(model, [3])
  with pytest.raises(validate.AnalysisError, match=r'-1 .*allowed 0\.\.2'):
    cls_insertion.check(model, [-1])
  with pytest.raises(validate.AnalysisError,
                     match="mode 'late' is not known: allowed alone, raw"):
    cls_insertion.check(model, [1], 'late')
  gap = models.get_model('mu/16', num_classes=4, classifier='gap')
  with pytest.raises(validate.AnalysisError, match='class token'):
    cls_insertion.check(gap, [1])


def test_released_vit_ti_matches_timm_blocks_in_the_authors_protocol(
    shared_data, fast_compile):
  """Our `cls_insert_layer=k` vs timm's `vit_tiny_patch16_224` (the same
  `.npz`, read by timm's loader) with its blocks applied as in
  experiments/it17/cls.py: class token alone through blocks 0..k-1, patches
  without it, concatenated, blocks k..11, norm, token 0, head."""
  del fast_compile
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  torch.set_num_threads(2)
  ckpt = str(shared_data / 'checkpoints' /
             'ViT-Ti_16-augreg-i21k-ft-i1k-224.npz')
  model = models.get_model('Ti/16', num_classes=1000)
  params = npz.load_npz(ckpt)  # at its own 224 px: no init needed
  theirs = timm.create_model('vit_tiny_patch16_224', pretrained=False,
                             act_layer='gelu_tanh')
  theirs.load_pretrained(ckpt)
  theirs.eval()
  paths, _ = data.imagenet_samples(str(shared_data), limit=1)
  x = data.to_model(data.load_images(paths, 224, progress=False))

  def timm_logits(k):
    with torch.no_grad():
      t = theirs._pos_embed(theirs.patch_embed(  # pylint: disable=protected-access
          torch.from_numpy(x).permute(0, 3, 1, 2)))
      cls, patches = t[:, :1], t[:, 1:]
      for block in theirs.blocks[:k]:
        cls, patches = block(cls), block(patches)
      t = torch.cat([cls, patches], dim=1)
      for block in theirs.blocks[k:]:
        t = block(t)
      return theirs.head(theirs.norm(t)[:, 0]).numpy()

  for k in (6, 12):
    ours = evaluation.Evaluator(model, params, 1,
                                cls_insert_layer=k).logits(x)
    assert np.std(ours) > 0.1
    np.testing.assert_allclose(ours, timm_logits(k), atol=1e-4, rtol=0)
