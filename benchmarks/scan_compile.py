"""Compile time and step time of a train step, scanned vs unrolled blocks.

    python benchmarks/scan_compile.py                    # L/16, H/14; CPU
    python benchmarks/scan_compile.py --models=B/16 --batch=8 --steps=2
    python benchmarks/scan_compile.py --models=H/14,g/14 --steps=0  # compile
    python benchmarks/scan_compile.py --models=mu/16 --resolution=32 \
        --batch=2 --steps=1                              # smoke

For each model, `scan_layers=False` and `True` (`vit_jax.models.scan`), each
in its own process (fresh compilation cache, memory returned): one SGD train
step (softmax cross-entropy on random images and labels, float32, params
donated) is traced and lowered (`jax.jit(step).lower(...)`), then compiled
(`.compile()`), then run `--steps` times (`--steps=0`: compile only, on
abstract parameters and inputs: nothing allocated). Plain SGD keeps the optimizer
state out of memory: parameters + gradients + activations only. Prints a
markdown table: parameters, lower seconds, compile seconds, seconds per
step (wall and this process's CPU time, each step; CPU time is the less
load-dependent figure on a shared machine), XLA's temporary buffer size
(`memory_analysis`: activations kept for the backward pass and scratch),
HLO size of the compiled module, and the host's peak RSS.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEADER = ('| model | layout | batch | params (M) | lower (s) | compile (s) | '
          's/step wall | s/step CPU | XLA temp (GiB) | HLO (k chars) | '
          'peak RSS (GiB) |\n'
          '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')


def measure(name: str, scanned: bool, batch: int, resolution: int,
            steps: int, remat_policy: str) -> dict:
  """One case, in this process (see the module doc)."""
  sys.path.insert(0, REPO)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from vit_jax import models  # pylint: disable=g-import-not-at-top

  model = models.get_model(name, num_classes=1000, scan_layers=scanned,
                           remat_policy=remat_policy)
  k_img, k_lab, k_init = jax.random.split(jax.random.key(0), 3)
  images = jax.random.uniform(k_img, (batch, resolution, resolution, 3),
                              jnp.float32, -1, 1)
  labels = jax.random.randint(k_lab, (batch,), 0, 1000)
  init = lambda k: model.init(k, images[:1])['params']
  if steps:
    params = jax.jit(init)(k_init)
  else:  # compile only: nothing allocated
    params = jax.eval_shape(init, k_init)
    images, labels = (jax.ShapeDtypeStruct(a.shape, a.dtype)
                      for a in (images, labels))
  n_params = sum(x.size for x in jax.tree.leaves(params))

  def step(params, images, labels):
    def loss_fn(p):
      logits = model.apply({'params': p}, images, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
    return params, loss

  t0 = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=0).lower(params, images, labels)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  hlo_chars = len(compiled.as_text() or '')
  mem = compiled.memory_analysis()
  temp_gib = mem.temp_size_in_bytes / 2**30 if mem else float('nan')
  times, cpu_times = [], []
  for _ in range(steps):
    t, ct = time.perf_counter(), time.process_time()
    params, loss = compiled(params, images, labels)
    loss.block_until_ready()
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - ct)
  return dict(model=name, layout='scanned' if scanned else 'unrolled',
              batch=batch, resolution=resolution, remat_policy=remat_policy,
              params=n_params, lower_s=t1 - t0, compile_s=t2 - t1,
              step_s=times, step_cpu_s=cpu_times, temp_gib=temp_gib,
              loss=float(loss) if steps else None,
              hlo_kchars=hlo_chars / 1e3,
              peak_rss_gib=resource.getrusage(
                  resource.RUSAGE_SELF).ru_maxrss / 2**20,
              device=str(jax.devices()[0].device_kind),
              cpus=os.cpu_count())


def row(r: dict) -> str:
  if 'error' in r:
    return f'| {r["model"]} | {r["layout"]} | {r["batch"]} | failed: ' \
           f'{r["error"]} |'
  steps = ', '.join(f'{s:.3g}' for s in r['step_s']) or '-'
  cpu = ', '.join(f'{s:.3g}' for s in r['step_cpu_s']) or '-'
  return (f'| {r["model"]} | {r["layout"]} | {r["batch"]} | '
          f'{r["params"] / 1e6:.1f} | {r["lower_s"]:.1f} | '
          f'{r["compile_s"]:.1f} | {steps} | {cpu} | {r["temp_gib"]:.2f} | '
          f'{r["hlo_kchars"]:.0f} | {r["peak_rss_gib"]:.1f} |')


def main(argv: Optional[list[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default='L/16,H/14')
  p.add_argument('--batch', default='8',
                 help='one batch size, or one per model (comma-separated)')
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--steps', type=int, default=2)
  p.add_argument('--remat_policy', default='none')
  p.add_argument('--layouts', default='unrolled,scanned')
  p.add_argument('--timeout', type=int, default=3600,
                 help='seconds per case')
  p.add_argument('--json', default=None, help='append results here')
  p.add_argument('--one', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(sys.argv[1:] if argv is None else argv)

  if args.one:  # child process: one case, JSON on the last line
    name, layout, batch = args.one.split(':')
    r = measure(name, layout == 'scanned', int(batch), args.resolution,
                args.steps, args.remat_policy)
    print(json.dumps(r))
    return 0

  names = args.models.split(',')
  batches = [int(b) for b in args.batch.split(',')]
  batches = batches * len(names) if len(batches) == 1 else batches
  if len(batches) != len(names):
    raise SystemExit(f'--batch: {len(batches)} sizes for {len(names)} '
                     'models')
  print(f'train step (SGD), float32, {args.resolution} px, '
        f'remat_policy={args.remat_policy}, {os.cpu_count()} CPUs; '
        f'load average {os.getloadavg()[0]:.1f}', flush=True)
  print(HEADER, flush=True)
  for name, batch in zip(names, batches):
    for layout in args.layouts.split(','):
      cmd = [sys.executable, os.path.abspath(__file__),
             f'--one={name}:{layout}:{batch}',
             f'--resolution={args.resolution}', f'--steps={args.steps}',
             f'--remat_policy={args.remat_policy}']
      try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=args.timeout, check=False)
        if out.returncode:
          tail = (out.stderr.strip().splitlines() or ['?'])[-1][:120]
          r = dict(model=name, layout=layout, batch=batch,
                   error=f'exit {out.returncode}: {tail}')
        else:
          r = json.loads(out.stdout.strip().splitlines()[-1])
      except subprocess.TimeoutExpired:
        r = dict(model=name, layout=layout, batch=batch,
                 error=f'over {args.timeout} s')
      print(row(r), flush=True)
      if args.json:
        with open(args.json, 'a') as f:
          f.write(json.dumps(r) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
