"""Top-1 / top-5 evaluation of a model over an eval split.

`make_eval_step` jits one sharded step that returns *sums* over the valid
(mask True) examples of a global batch; `evaluate` adds them up over the
eval split, so padding in the last batch and any number of processes give
exact averages. (`trainer='evaluate'`, one evaluation of a workdir or a
pretrained file, is `vit_jax.training.train.evaluate_checkpoint`.)
"""

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax.data import device_data
from vit_jax.perf import microbatch


def make_eval_step(model, param_shardings, batch_sharding,
                   replicated, microbatches: int = 1) -> Callable:
  """jit(params, batch) -> sums {correct1, correct5, loss, count}.

  `batch` holds 'image' [B, H, W, 3], 'label' [B] int32, 'mask' [B] bool.
  The forward runs as `microbatches` independent parts
  (`vit_jax.perf.microbatch`, `config.perf.microbatches`; same logits).
  """

  def eval_step(params, batch):
    logits = microbatch.map_batch(
        lambda x: model.apply({'params': params}, x, train=False),
        batch['image'], microbatches)
    logits = logits.astype(jnp.float32)
    labels, mask = batch['label'], batch['mask'].astype(jnp.float32)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    correct1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    correct5 = jnp.any(topk == labels[:, None], axis=1).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {'correct1': jnp.sum(correct1 * mask),
            'correct5': jnp.sum(correct5 * mask),
            'loss': jnp.sum(loss * mask), 'count': jnp.sum(mask)}

  return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding),
                 out_shardings=replicated)


def evaluate(eval_step: Callable, params, batches: Iterable[dict],
             batch_sharding, prefetch: int = 2) -> dict[str, float]:
  """{'top1', 'top5', 'loss', 'count'} over one pass of host `batches`."""
  totals = None
  for batch in device_data.prefetch(batches, batch_sharding, prefetch):
    sums = eval_step(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('the eval split yielded no batches')
  t = {k: float(np.asarray(v)) for k, v in jax.device_get(totals).items()}
  n = max(t['count'], 1.0)
  return {'top1': t['correct1'] / n, 'top5': t['correct5'] / n,
          'loss': t['loss'] / n, 'count': t['count']}
