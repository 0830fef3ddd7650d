"""Top-1 of a model over an image set, in fixed-size jitted batches.

    ev = evaluation.Evaluator(model, params, batch_size=50)
    acc = ev.top1(images_uint8, labels, transform=lambda x: x)

`transform` maps a float batch [B, H, W, 3] in [-1, 1] to the batch the model
sees (a low-pass filter, patch masking, ...). The last batch is padded to the
batch size so one compilation serves the whole set; progress goes to stderr.
"""

import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.analysis import data


class Evaluator:
  """Holds a jitted forward pass of `model` (apply kwargs fixed)."""

  def __init__(self, model, params, batch_size: int = 50, **apply_kwargs):
    self.params = params
    self.batch_size = batch_size
    self._fwd = jax.jit(
        lambda p, x: model.apply({'params': p}, x, **apply_kwargs))

  def logits(self, images, transform: Optional[Callable] = None,
             desc: str = '') -> np.ndarray:
    """uint8 or float images [B, H, W, 3] -> float32 logits [B, classes]."""
    out, n, bs = [], len(images), self.batch_size
    t0 = time.time()
    for i in range(0, n, bs):
      x = images[i:i + bs]
      x = data.to_model(x) if x.dtype == np.uint8 else np.asarray(x)
      if transform is not None:
        x = np.asarray(transform(x), np.float32)
      pad = bs - len(x)
      if pad:
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      out.append(np.asarray(self._fwd(self.params, jnp.asarray(x)))[:bs - pad])
      if desc and (i // bs) % 5 == 4:
        done = min(i + bs, n)
        print(f'  {desc}: {done}/{n} images, '
              f'{done / (time.time() - t0):.1f} img/s', file=sys.stderr,
              flush=True)
    return np.concatenate(out)

  def top1(self, images, labels, transform: Optional[Callable] = None,
           desc: str = '') -> float:
    """Share of images whose arg-max logit is the label (0..1)."""
    pred = self.logits(images, transform, desc).argmax(-1)
    return float(np.mean(pred == np.asarray(labels)))
