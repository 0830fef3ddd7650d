"""Our step with each MLP activation, alternating in one process.

    python benchmarks/mlp_activation_ab.py --model=Ti/16 --mode=train
    python benchmarks/mlp_activation_ab.py --model=B/16 --mode=infer --rounds=4

Compiles `vit_jax.perf.bench.compile_step` once per `mlp_activation` (the default
'gelu_tanh', as the released checkpoints, and the exact 'gelu_erf'), then
times them in alternating rounds on the same inputs and prints img/s of each
and the ratio (median step time of gelu_erf / gelu_tanh: > 1 means the
default is faster).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))  # the repository, for `vit_jax`
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from vit_jax.perf import bench  # pylint: disable=g-import-not-at-top
from vit_jax.models import gelu  # pylint: disable=g-import-not-at-top


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='Ti/16')
  p.add_argument('--mode', default='train', choices=['infer', 'train'])
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--rounds', type=int, default=8)
  args = p.parse_args()
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.uniform(-1, 1, (args.batch, args.resolution,
                                      args.resolution, 3)).astype(np.float32))
  y = jnp.asarray(np.arange(args.batch) % 1000, jnp.int32)
  steps = {}
  for act in gelu.ACTIVATIONS:
    model = bench.build_model(args.model, num_classes=1000,
                              mlp_activation=act)
    params = jax.jit(lambda k, m=model: m.init(k, x[:1])['params'])(
        jax.random.key(0))
    _, call, _ = bench.compile_step(model, args.mode, params, x, y)
    jax.block_until_ready(call())  # warm-up
    steps[act] = call
  times = {a: [] for a in steps}
  for _ in range(args.rounds):
    for act, call in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      times[act].append(time.perf_counter() - t0)
  med = {a: float(np.median(t)) for a, t in times.items()}
  figures = ', '.join(f'{a} {args.batch / m:.2f} img/s' for a, m in
                      med.items())
  print(f'{args.model} {args.mode} {args.resolution}px b{args.batch}: '
        f'{figures}; gelu_erf / gelu_tanh step time '
        f'{med["gelu_erf"] / med["gelu_tanh"]:.3f} ({args.rounds} '
        'alternating rounds)')


if __name__ == '__main__':
  main()
