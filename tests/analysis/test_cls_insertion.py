"""Tests of the CLS late-insertion probe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.analysis import cls_insertion
from vit_jax.analysis import evaluation
from vit_jax.analysis import validate


def test_insert_layer_zero_is_the_normal_model_and_late_differs():
  model = models.get_model('mu/16', num_classes=4, num_layers=3)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  params['head']['kernel'] = jax.random.normal(jax.random.key(2),
                                               params['head']['kernel'].shape)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
  normal = evaluation.Evaluator(model, params, batch_size=4).logits(images)
  labels = normal.argmax(-1)
  res = cls_insertion.top1_by_layer(model, params, images, labels,
                                    layers=[0, 2], batch_size=4)
  assert res[0] == 1.0  # labels are the normal model's predictions
  late = evaluation.Evaluator(model, params, 4, cls_insert_layer=2).logits(
      images)
  assert not np.allclose(late, normal, atol=1e-4)


def test_errors():
  model = models.get_model('mu/16', num_classes=4)
  with pytest.raises(validate.AnalysisError, match=r'allowed 0\.\.1'):
    cls_insertion.check(model, [2])
  gap = models.get_model('mu/16', num_classes=4, classifier='gap')
  with pytest.raises(validate.AnalysisError, match='class token'):
    cls_insertion.check(gap, [1])
