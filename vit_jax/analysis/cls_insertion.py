"""Late insertion of the class token (Ghiasi et al. 2022, Section 6).

The class token joins the patch tokens only before block k (k = 0..L; k = 0
is the normal model, k = L: it never meets them). Before that, in the
default mode 'alone' (the protocol of the authors' code,
hamidkazemi22/vit-visualization `experiments/it17/cls.py`), the class token
(learned embedding plus position row 0) runs through blocks 0..k-1 by
itself, as a one-token sequence attending only to itself, while the patch
tokens run through the same blocks without it; then blocks k..L-1, the final
norm, token 0 and the head. Mode 'raw' instead prepends the untouched class
token before block k. Ghiasi et al. report for ViT-B/16 (384 px, ImageNet
val) 84.20 % top-1 at k = 0, 78.61 % at k = 11 and 0.10 % at k = 12: the
class token needs the patches only at the end.

The model side is `model.apply(..., cls_insert_layer=k,
cls_insert_mode=mode)` (`vit_jax.models.vit.Encoder`); this module checks
the request and measures top-1 for several k.
"""

from typing import Optional, Sequence

import numpy as np

from vit_jax.analysis import evaluation
from vit_jax.analysis import modelinfo
from vit_jax.analysis import validate
from vit_jax.models import vit

MODES = vit.CLS_INSERT_MODES

PROTOCOLS = {
    'alone': ('class token alone through blocks 0..k-1, then joined with '
              'the patch tokens (Ghiasi et al., experiments/it17/cls.py)'),
    'raw': ('raw class token (embedding + position row 0) prepended before '
            'block k, skipping blocks 0..k-1'),
}


def check(model, layers: Sequence[int], mode: str = 'alone') -> list[int]:
  """The insertion layers (each in 0..L) if valid, else a one-line error."""
  if modelinfo.num_prefix(model) != 1:
    raise validate.AnalysisError(
        'CLS late insertion needs a model with a class token '
        f'(classifier=token); this one is {modelinfo.describe(model)} with '
        f'classifier={getattr(model, "classifier", None)!r}')
  validate.choice('mode', mode, MODES)
  n = modelinfo.num_layers(model)
  for k in layers:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
      raise validate.AnalysisError(
          f'insertion layer {k!r} is out of range: allowed 0..{n} '
          f'({modelinfo.describe(model)}; {n} = the class token never '
          'meets the patch tokens)')
  return list(layers)


def top1(model, params, images: np.ndarray, labels: np.ndarray, layer: int,
         mode: str = 'alone', batch_size: int = 50) -> float:
  """Top-1 (0..1) with the class token inserted before block `layer`.

  Args:
    model, params: a ViT with a class token and its parameters.
    images: uint8 [B, H, W, 3]; labels: int [B].
    layer: k in 0..L; mode: 'alone' or 'raw' (module doc).
  """
  (layer,) = check(model, [layer], mode)
  ev = evaluation.Evaluator(model, params, batch_size,
                            cls_insert_layer=layer, cls_insert_mode=mode)
  return ev.top1(images, labels, desc=f'CLS ({mode}) inserted at block '
                 f'{layer}')


def top1_by_layer(model, params, images: np.ndarray, labels: np.ndarray,
                  layers: Optional[Sequence[int]] = None,
                  mode: str = 'alone',
                  batch_size: int = 50) -> dict[int, float]:
  """{insertion layer k: top-1 (0..1)}; default k = 0..L (see `top1`)."""
  n = modelinfo.num_layers(model)
  layers = check(model, range(n + 1) if layers is None else layers, mode)
  return {k: top1(model, params, images, labels, k, mode, batch_size)
          for k in layers}
