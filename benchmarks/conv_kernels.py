"""The ResNet stem's convolutions on the CPU: implicit GEMM vs the others.

    python benchmarks/conv_kernels.py                 # R26's convs, batch 16
    python benchmarks/conv_kernels.py --batch=1 --steps=1 --scale=8   # smoke

For each convolution of an R26 (BiT ResNetV2) stem at 224 px, prints
milliseconds (median of `--steps` after a warm-up) and GFLOP/s of the
forward by the OpenBLAS implicit-GEMM kernel (`cpu_gemm.conv`), by an
explicit im2col + one OpenBLAS sgemm, and by XLA's convolution; and of the
kernel gradient by `cpu_gemm.conv_kernel_grad` and by im2col + one sgemm.
Each is jitted alone, so the im2col column is its unfused cost (inside a
training step XLA fuses part of it into the producer of the conv's input).
Inputs are random normal, float32.
"""

import argparse
import os
import statistics
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import jax  # pylint: disable=g-import-not-at-top

from vit_jax.perf import bench  # pylint: disable=g-import-not-at-top
from vit_jax.perf import cpu_gemm  # pylint: disable=g-import-not-at-top
from vit_jax.perf import conv  # pylint: disable=g-import-not-at-top

# (input size, input features, output features, kernel, stride) of R26+S/32's
# root and its 3x3 convs (stages 1-4: first unit strided after stage 1).
R26_CONVS = [(224, 3, 64, 7, 2), (56, 64, 64, 3, 1), (56, 128, 128, 3, 2),
             (28, 128, 128, 3, 1), (28, 256, 256, 3, 2), (14, 256, 256, 3, 1),
             (14, 512, 512, 3, 2), (7, 512, 512, 3, 1)]


def _median_ms(fn, args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def measure(batch: int, size: int, c: int, o: int, k: int, s: int,
            steps: int) -> dict:
  """Milliseconds of each way of computing one convolution and its kernel
  gradient ('SAME' padding), and the convolution's GFLOP."""
  pads = conv.explicit_padding((size, size), (k, k), (s, s), 'SAME')
  oh = cpu_gemm.conv_output_size((size, size), (k, k), (s, s), pads)[0]
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, size, size, c))
  w = jax.random.normal(kw, (k * k * c, o))
  g = jax.random.normal(kg, (batch, oh, oh, o))

  def cols(x):
    return conv.im2col(x, (k, k), (s, s), pads).reshape(-1, k * k * c)

  forward = {
      'implicit': lambda x, w: cpu_gemm.conv(x, w, (k, k), (s, s), pads),
      'im2col': lambda x, w: cpu_gemm.gemm(cols(x), w),
      'xla': lambda x, w: jax.lax.conv_general_dilated(
          x, w.reshape(k, k, c, o), (s, s), pads,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
  }
  kernel_grad = {
      'implicit': lambda x, g: cpu_gemm.conv_kernel_grad(
          x, g, (k, k), (s, s), pads),
      'im2col': lambda x, g: cpu_gemm.gemm(cols(x), g.reshape(-1, o),
                                           trans_a=True),
  }
  ms = {f'fwd_{n}': _median_ms(jax.jit(f), (x, w), steps)
        for n, f in forward.items()}
  ms.update({f'dk_{n}': _median_ms(jax.jit(f), (x, g), steps)
             for n, f in kernel_grad.items()})
  return dict(gflop=2 * batch * oh * oh * k * k * c * o / 1e9, ms=ms)


def main(argv: Optional[list[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=16,
                 help='images (16: a training micro-batch of batch 32)')
  p.add_argument('--steps', type=int, default=7)
  p.add_argument('--scale', type=int, default=1,
                 help='divide sizes and features by this (smoke runs)')
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  if True:  # pylint: disable=using-constant-test
    if not cpu_gemm.available():
      print('error: the OpenBLAS kernels need a CPU backend and a C++ '
            'compiler (see the warning above)', file=sys.stderr)
      return 1
    print(f'device {bench.device_name()}, load {os.getloadavg()[0]:.1f}; '
          f'batch {args.batch}, ms (GFLOP/s)')
    print('conv                        GFLOP | forward: implicit / im2col / '
          'xla | kernel grad: implicit / im2col')
    for size, c, o, k, s in R26_CONVS:
      size, c, o = (max(size // args.scale, k), max(c // args.scale, 1),
                    max(o // args.scale, 1))
      r = measure(args.batch, size, c, o, k, s, args.steps)
      cell = lambda n, r=r: (f'{r["ms"][n]:6.1f} '
                             f'({r["gflop"] / r["ms"][n] * 1e3:5.0f})')
      print(f'{size:3d}x{size:<3d}x{c:3d} -> {o:3d} {k}x{k}/{s} '
            f'{r["gflop"]:6.2f}'
            f' | {cell("fwd_implicit")} {cell("fwd_im2col")} '
            f'{cell("fwd_xla")} | {cell("dk_implicit")} {cell("dk_im2col")}')
  return 0


if __name__ == '__main__':
  from vit_jax.perf import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.apply('auto')
  sys.exit(main())
