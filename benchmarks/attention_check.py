"""cuDNN vs XLA attention of our ViT: same function, and which is faster.

    python benchmarks/attention_check.py --model=B/16 --batch=64   # GPU only

Builds the model twice (`config.perf.attention` 'einsum' and 'cudnn' through
`vit_jax.perf.hooks`, identical parameters), compares bf16 logits and parameter gradients by relative L2
error ||a - b|| / ||b||, and times a forward+backward of each. Exits 1 if
cuDNN is unavailable for this shape (the message says why).
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from vit_jax.perf import bench  # pylint: disable=g-import-not-at-top


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='B/16')
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--cudnn_seq_multiple', type=int, default=8)
  args = p.parse_args()
  print(f'cudnn_seq_multiple={args.cudnn_seq_multiple}')
  x = jax.random.uniform(jax.random.key(1),
                         (args.batch, args.resolution, args.resolution, 3),
                         jnp.float32, -1, 1)
  y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 1000)
  outs = {}
  for impl in ('einsum', 'cudnn'):
    m = bench.build_model(
        args.model, dict(attention=impl,
                         cudnn_seq_multiple=args.cudnn_seq_multiple),
        dtype=jnp.bfloat16)
    params = jax.jit(m.init)(jax.random.key(0), x[:1])['params']
    # a non-zero head so that gradients reach every layer
    params['head']['kernel'] = 0.02 * jax.random.normal(
        jax.random.key(3), params['head']['kernel'].shape)

    def loss(p, m=m):
      logits = m.apply({'params': p}, x).astype(jnp.float32)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y).mean(), logits
    f = jax.jit(jax.value_and_grad(loss, has_aux=True))
    try:
      (_, logits), g = jax.block_until_ready(f(params))
    except Exception as e:  # pylint: disable=broad-except
      print(f'{impl}: FAILED {type(e).__name__}: {str(e).splitlines()[0]}')
      return 1
    ts = []
    for _ in range(10):
      t0 = time.perf_counter()
      jax.block_until_ready(f(params))
      ts.append(time.perf_counter() - t0)
    outs[impl] = (logits, g)
    print(f'{impl}: fwd+bwd {1e3 * statistics.median(ts):.1f} ms')
  (la, ga), (lb, gb) = outs['cudnn'], outs['einsum']
  errs = sorted(
      ((rel(a, b), jax.tree_util.keystr(path), float(jnp.linalg.norm(b)))
       for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ga),
                               jax.tree_util.tree_leaves(gb))), reverse=True)
  for e, name, norm in errs[:6]:
    print(f'  gradient rel err {e:.2e} at {name} (|einsum grad| {norm:.2e})')
  gerr = errs[0][0]
  print(f'cudnn vs einsum (bf16): logits rel err {rel(la, lb):.2e}, '
        f'worst gradient leaf rel err {gerr:.2e}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
