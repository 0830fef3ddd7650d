"""Late insertion of the class token (Ghiasi et al. 2022, Section 6).

The class token (its learned embedding plus position row 0) is kept out of
blocks 0..k-1 and prepended before block k; the patch tokens go through all
blocks as usual. Ghiasi et al. report ViT-B/16 on ImageNet val at 84.20 %
top-1 normally and 78.61 % with the token inserted before the last block:
the class token matters mostly at the end.

The model side is `model.apply(..., cls_insert_layer=k)`; this module checks
the request and measures top-1 for several k.
"""

from typing import Optional, Sequence

import numpy as np

from vit_jax.analysis import evaluation
from vit_jax.analysis import modelinfo
from vit_jax.analysis import validate


def check(model, layers: Sequence[int]) -> list[int]:
  """Valid insertion layers (negative counts from the end)."""
  if modelinfo.num_prefix(model) != 1:
    raise validate.AnalysisError(
        'CLS late insertion needs a model with a class token '
        f'(classifier=token); this one is {modelinfo.describe(model)} with '
        f'classifier={getattr(model, "classifier", None)!r}')
  return [modelinfo.check_layer(model, k) for k in layers]


def top1_by_layer(model, params, images: np.ndarray, labels: np.ndarray,
                  layers: Optional[Sequence[int]] = None,
                  batch_size: int = 50) -> dict[int, float]:
  """{insertion layer k: top-1} (k = 0 is the normal model).

  Args:
    model, params: a ViT with a class token and its parameters.
    images: uint8 [B, H, W, 3]; labels: int [B].
    layers: insertion layers; default (0, L-1).
  """
  n = modelinfo.num_layers(model)
  layers = check(model, layers if layers is not None else (0, n - 1))
  out = {}
  for k in layers:
    ev = evaluation.Evaluator(model, params, batch_size, cls_insert_layer=k)
    out[k] = ev.top1(images, labels, desc=f'CLS inserted at block {k}')
  return out
