"""Independent micro-batches in one step, so XLA:CPU can run them side by side.

XLA:CPU runs a step as a graph of ops, each spread over the cores. On a small
host (the 2-core machine of docs/performance.md, measured with `perf`) the
cores sit idle 12 % of a ViT-Ti/16 inference step (torch: 1 %): in the tails
of ops too small to split evenly, and between dependent ops. Splitting the
batch into `k` micro-batches whose forward (and backward) passes do not
depend on each other gives the executor independent work for those gaps.
Measured there, batch 32, fp32: ViT-Ti/16 inference 46.6 -> 55.2 img/s
(k=4), training 15.1 -> 16.7 img/s (k=2); ViT-S/16 inference 15.2 -> 16.3
(k=4), training +11-28 % (k=2, two allocator settings). Compile time grows
with k (S/16 training: about 6 s at k=1, 8 s at k=2, 16 s at k=4).

Nothing changes in what is computed: the models have no batch statistics
(LayerNorm / GroupNorm), so each example's logits do not depend on how the
batch is split (rows of a matmul are independent), and a training step's loss
and gradients are the mean over micro-batches of their means, which is the
batch mean (summed in a different order: fp32 rounding).

Rows are dealt out round-robin (row r to micro-batch r % k), like
`train.train_step`'s accumulation split, so a batch sharded over devices
splits without moving data; `merge` restores the order.

`resolve(requested, kind, batch, resolution)` turns the config value into k:
a positive value is used as given (it must divide the batch); 0 means
automatic: on the CPU backend with a single device and images of at most
`AUTO_MAX_RESOLUTION` pixels, `AUTO_CPU[kind]` (the largest such k that
divides the batch), else 1. GPUs and TPUs keep their cores busy within one
op, multi-device hosts already run one program per device, and at higher
resolutions each op is large enough: ViT-B/16 inference at 384 px ran 29.3 s
per batch of 32 at k=1 and 32.8 s at k=4.
"""

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

# Micro-batches per step on a single-device CPU, by step kind (measured, above).
AUTO_CPU = {'infer': 4, 'train': 2}
AUTO_MAX_RESOLUTION = 256  # pixels (height and width); above: k = 1


def resolve(requested: int, kind: str, batch: int,
            devices: Optional[Sequence[Any]] = None,
            resolution: Optional[int] = None) -> int:
  """Number of micro-batches for a step of `kind` ('infer' | 'train').

  `resolution`: the image side in pixels, if known (None: not considered).
  """
  if kind not in AUTO_CPU:
    raise ValueError(f'kind={kind!r}; allowed: {", ".join(AUTO_CPU)}')
  if requested < 0:
    raise ValueError(f'perf.microbatches={requested} must be >= 0 '
                     '(0 = automatic)')
  if requested > 0:
    if batch % requested:
      raise ValueError(f'perf.microbatches={requested} does not divide '
                       f'the batch of {batch}')
    return requested
  devices = jax.devices() if devices is None else devices
  if len(devices) != 1 or devices[0].platform != 'cpu':
    return 1
  if resolution is not None and resolution > AUTO_MAX_RESOLUTION:
    return 1
  k = AUTO_CPU[kind]
  while batch % k:
    k -= 1
  return k


def split(x: jax.Array, k: int) -> list[jax.Array]:
  """[B, ...] -> k arrays [B/k, ...]; row r goes to part r % k."""
  if x.shape[0] % k:
    raise ValueError(f'batch of {x.shape[0]} does not split into {k} parts')
  x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
  return [x[:, i] for i in range(k)]


def merge(parts: Sequence[jax.Array]) -> jax.Array:
  """Inverse of `split`: k arrays [B/k, ...] -> [B, ...] in the original order."""
  x = jnp.stack(parts, axis=1)
  return x.reshape((-1,) + x.shape[2:])


def map_batch(fn: Callable[[jax.Array], Any], x: jax.Array, k: int) -> Any:
  """`fn(x)` for a batch-wise `fn`, computed as k independent micro-batches.

  `fn` maps [b, ...] to a pytree of arrays with leading dimension b; the
  result equals `fn(x)`'s (row by row).
  """
  if k == 1:
    return fn(x)
  outs = [fn(p) for p in split(x, k)]
  return jax.tree.map(lambda *ps: merge(ps), *outs)


def mean_value_and_grad(loss_fn: Callable[..., jax.Array], k: int
                        ) -> Callable[..., tuple[jax.Array, Any]]:
  """value_and_grad of a per-batch mean loss, over k independent micro-batches.

  `loss_fn(params, *batch_args, rng)` returns the mean loss of a batch whose
  arrays `batch_args` share the leading dimension; `rng` (a PRNG key or
  None) is folded with the micro-batch index when k > 1, so dropout masks
  differ between micro-batches. Returns fn(params, *batch_args, rng) ->
  (mean loss, mean gradient), equal to `jax.value_and_grad(loss_fn)` up to
  summation order.
  """
  grad_fn = jax.value_and_grad(loss_fn)
  if k == 1:
    return grad_fn

  def fn(params, *args):
    *batch_args, rng = args
    parts = [split(a, k) for a in batch_args]
    loss, grads = None, None
    for i in range(k):
      r = None if rng is None else jax.random.fold_in(rng, i)
      li, gi = grad_fn(params, *(p[i] for p in parts), r)
      loss = li if loss is None else loss + li
      grads = gi if grads is None else jax.tree.map(jnp.add, grads, gi)
    return loss / k, jax.tree.map(lambda g: g / k, grads)
  return fn
