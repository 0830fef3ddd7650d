"""The matmul ceiling MFU is measured against: n^3 products in numpy and JAX.

    python benchmarks/matmul_peak.py                  # 2048^3 fp32, CPU
    python benchmarks/matmul_peak.py --n=8192 --dtype=bfloat16   # GPU
    python benchmarks/matmul_peak.py --n=256 --steps=1           # smoke

Prints GFLOP/s = 2 n^3 / seconds (median of `--steps` after a warm-up) for
numpy (fp32 only) and for a jitted `jnp.matmul` on the default device, on
random normal inputs (never zeros).
"""

import argparse
import os
import statistics
import sys
import time
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from vit_jax.perf import bench  # pylint: disable=g-import-not-at-top


def numpy_gflops(n: int, steps: int) -> float:
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), np.float32)
  b = rng.standard_normal((n, n), np.float32)
  a @ b  # pylint: disable=pointless-statement
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    a @ b  # pylint: disable=pointless-statement
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / statistics.median(times) / 1e9


def main(argv: Optional[list[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--n', type=int, default=2048)
  p.add_argument('--dtype', default='float32', choices=list(bench.DTYPES))
  p.add_argument('--steps', type=int, default=5)
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  print(f'device {bench.device_name()}, load {os.getloadavg()[0]:.1f}')
  if args.dtype == 'float32':
    print(f'numpy {args.n}^3 fp32: '
          f'{numpy_gflops(args.n, args.steps):.1f} GFLOP/s')
  tf = bench.matmul_peak_tflops(args.n, bench.DTYPES[args.dtype], args.steps)
  print(f'jax   {args.n}^3 {args.dtype}: {tf * 1e3:.1f} GFLOP/s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
