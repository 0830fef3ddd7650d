"""Step time vs model size and resolution: a table Ti -> S -> B -> L, 224/384.

    python benchmarks/scaling.py                         # train, fp32, CPU
    python benchmarks/scaling.py --dtype=bfloat16 --batch=64 \
        --models=Ti/16,S/16,B/16,L/16,H/14 --resolutions=224,384   # GPU
    python benchmarks/scaling.py --models=mu/16 --resolutions=32,64 \
        --batch=2 --steps=1                              # smoke

Runs `vit_jax.perf.bench.run` for every (model, resolution) in one process and
prints a markdown table: params, GFLOPs per image (forward, 2 x MACs), img/s,
ms per step, achieved TFLOP/s, MFU, peak memory, compile seconds. A case that
fails (e.g. out of memory) is reported in its row and the table goes on.
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from vit_jax.perf import bench  # pylint: disable=g-import-not-at-top
from vit_jax.perf import host_malloc  # pylint: disable=g-import-not-at-top

HEADER = ('| model | res | params (M) | GFLOPs/img | img/s | ms/step | '
          'TFLOP/s | MFU | peak mem (GiB) | compile (s) |\n'
          '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')


def row(r: bench.Result) -> str:
  mem = (f'{r.device_peak_bytes / 2**30:.2f}' if r.device_peak_bytes
         else 'n/a')
  return (f'| {r.model} | {r.resolution} | {r.num_params / 1e6:.1f} | '
          f'{r.forward_flops_per_img / 1e9:.1f} | {r.img_per_s:.2f} | '
          f'{r.step_s_median * 1e3:.0f} | {r.tflops:.3f} | '
          f'{100 * r.mfu:.1f}% | {mem} | {r.compile_s:.1f} |')


def main(argv: Optional[list[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default='Ti/16,S/16,B/16,L/16')
  p.add_argument('--resolutions', default='224,384')
  p.add_argument('--mode', default='train', choices=list(bench.MODES))
  p.add_argument('--dtype', default='float32', choices=list(bench.DTYPES))
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--remat', action='store_true')
  p.add_argument('--attention_impl', default=None, choices=['xla', 'cudnn'])
  p.add_argument('--peak_tflops', type=float, default=None)
  p.add_argument('--json', default=None, help='append results here')
  args = p.parse_args(sys.argv[1:] if argv is None else argv)

  peak, src = ((args.peak_tflops, 'given') if args.peak_tflops
               else bench.default_peak())
  print(f'{args.mode} {args.dtype} batch {args.batch} on '
        f'{bench.device_name()}; MFU vs {peak:.3f} TFLOP/s ({src})')
  lines = []
  for m in args.models.split(','):
    for res in (int(x) for x in args.resolutions.split(',')):
      try:
        r = bench.run(m, resolution=res, batch=args.batch, dtype=args.dtype,
                      mode=args.mode, steps=args.steps, warmup=args.warmup,
                      remat=args.remat, peak_tflops=peak, peak_source=src,
                      attention_impl=args.attention_impl, log=lambda s: None)
      except Exception as e:  # pylint: disable=broad-except
        msg = str(e).split('\n')[0][:100]
        lines.append(f'| {m} | {res} | failed: {type(e).__name__}: {msg} |')
        print(lines[-1], flush=True)
        continue
      lines.append(row(r))
      print(r.summary(), flush=True)
      if args.json:
        with open(args.json, 'a') as f:
          f.write(json.dumps(dataclasses.asdict(r)) + '\n')
  print(HEADER)
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  host_malloc.apply('auto')  # before XLA starts its threads
  sys.exit(main())
