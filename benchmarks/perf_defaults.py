"""Which `config.perf` pieces pay: every combination timed, alternating.

    python benchmarks/perf_defaults.py                           # all cases
    python benchmarks/perf_defaults.py --cases=ti16,s16 --modes=train
    python benchmarks/perf_defaults.py --cases=b16 --rounds=2 --json=b16.json
    python benchmarks/perf_defaults.py --cases=ti16 --pieces= \
        --allocators=default,mallopt                    # allocator only
    python benchmarks/perf_defaults.py --cases=tiny --rounds=1   # smoke

For each case (ti16 ViT-Ti/16, s16 S/16, b16 B/16, r26_s32 R26+S/32,
mixer_b16 Mixer-B/16; `tiny` mu/16 at 32 px for tests) and mode (infer:
forward; train: AdamW step on softmax cross-entropy), fp32, batch
`--batch` (32) at `--resolution` (224) px, the step is compiled for every
combination of the pieces of `vit_jax.perf.hooks` that apply to the model
(`PIECES`, restricted by `--pieces`; the pieces not varied run their stock
path), in each allocator setting of
`--allocators` (`vit_jax.perf.host_malloc`: 'default' glibc malloc, 'mallopt' its
settings, 'thp' those plus the step's heap reserved on transparent huge
pages after compiling (`host_malloc.reserve(temp, huge_pages=True)`),
'hugetlb' mallopt plus the environment's `glibc.malloc.hugetlb=1`).
With more combinations than `--max_combinations` the design is the stock
path, each piece changed alone from it, the previous default (`LEGACY`,
everything on) and each piece reverted alone from that.

Then `--rounds` rounds: each runs one step of every combination, in an order
rotated every round, so the machine's load falls on all of them alike; the
median over rounds is reported. Printed per case and mode: img/s of each
combination, its ratio to the stock path (> 1: faster), its page faults per
step (median), and which one is fastest; with `--json`, the rows.

Each allocator setting runs in its own child process (`--_worker`; the
allocator must be set before XLA starts its threads); parameters and
optimizer state are shared by the combinations (they have the same
parameters) and not donated, so each step starts from the same state.
No tensorflow / ml_collections imports.
"""

import argparse
import datetime
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {  # name -> (registry name, family)
    'ti16': ('Ti/16', 'vit'),
    's16': ('S/16', 'vit'),
    'b16': ('B/16', 'vit'),
    'r26_s32': ('R26+S/32', 'hybrid'),
    'mixer_b16': ('Mixer-B/16', 'mixer'),
    'tiny': ('mu/16', 'vit'),
}
MODES = ('infer', 'train')
# piece -> values; the first is the stock path.
PIECES = {
    'cpu_gemm': ('off', 'on'),
    'attention': ('einsum', 'xla', 'custom_grad'),
    'conv': ('xla', 'pointwise', 'im2col', 'implicit_gemm'),
    'group_norm': ('flax', 'two_stage'),
    'weight_std': ('plain', 'custom_grad'),
    'microbatches': (1, 'auto'),
}
FAMILY_PIECES = {
    'vit': ('cpu_gemm', 'attention', 'conv', 'microbatches'),
    'hybrid': ('cpu_gemm', 'attention', 'conv', 'group_norm', 'weight_std',
               'microbatches'),
    'mixer': ('cpu_gemm', 'conv', 'microbatches'),
}
# A ViT's or Mixer's only convolution is the patch embedding (kernel =
# stride): 'pointwise' leaves it to XLA, 'im2col' is its reshape and one XLA
# matmul, 'implicit_gemm' the same through OpenBLAS.
PATCH_EMBEDDING_ONLY = {'conv': ('xla', 'im2col', 'implicit_gemm')}
FAMILY_VALUES = {'vit': PATCH_EMBEDDING_ONLY, 'mixer': PATCH_EMBEDDING_ONLY}
# The speed pieces as they were all switched on before this measurement.
LEGACY = dict(cpu_gemm='on', attention='custom_grad', conv='implicit_gemm',
              group_norm='two_stage', weight_std='custom_grad',
              microbatches='auto')
ALLOCATORS = ('default', 'mallopt', 'thp', 'hugetlb')


def combinations(family: str, pieces: Optional[list[str]],
                 max_combinations: int) -> list[dict[str, Any]]:
  """The combinations to time (module doc); the first is the stock path."""
  names = [p for p in FAMILY_PIECES[family]
           if pieces is None or p in pieces]
  values = {p: FAMILY_VALUES.get(family, {}).get(p, PIECES[p]) for p in names}
  stock = {p: PIECES[p][0] for p in names}
  full = [dict(zip(names, vals))
          for vals in itertools.product(*(values[p] for p in names))]
  if len(full) <= max_combinations:
    return full
  legacy = {p: LEGACY[p] for p in names}
  out = [stock]
  for p in names:
    out += [dict(stock, **{p: v}) for v in values[p][1:]]
  out.append(legacy)
  out += [dict(legacy, **{p: stock[p]}) for p in names if legacy[p] != stock[p]]
  unique = []
  for c in out:
    if c not in unique:
      unique.append(c)
  return unique


def label(combo: dict[str, Any]) -> str:
  """'stock' or the pieces that differ from it, e.g. 'cpu_gemm=on'."""
  diff = [f'{p}={v}' for p, v in combo.items() if v != PIECES[p][0]]
  return ','.join(diff) or 'stock'


# ---------------------------------------------------------------- worker


def _worker(allocator: str) -> int:
  """Child: builds and runs steps on request (JSON lines, stdin/stdout)."""
  out = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)  # everything else printed goes to stderr
  sys.path.insert(0, REPO)
  from vit_jax.perf import host_malloc  # pylint: disable=g-import-not-at-top
  if allocator in ('mallopt', 'thp', 'hugetlb'):
    if not host_malloc.apply('on'):
      raise RuntimeError('mallopt failed (not glibc?)')
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from vit_jax import models
  from vit_jax.perf import bench
  from vit_jax.perf import hooks
  steps, shared = {}, {}
  for line in sys.stdin:
    req = json.loads(line)
    if 'build' in req:
      b = req['build']
      name, res, batch = b['model'], b['resolution'], b['batch']
      combo = b['combo']
      # Pieces the combination does not name run their stock path.
      perf = {p: combo.get(p, values[0]) for p, values in PIECES.items()
              if p != 'microbatches'}
      k = combo.get('microbatches', 1)
      perf['microbatches'] = 0 if k == 'auto' else k
      kw = hooks.model_overrides(perf, jax.default_backend(),
                                 jax.device_count(), name)
      model = models.get_model(name, num_classes=1000, **kw)
      key = (name, res, batch, b['mode'])
      if key not in shared:
        shared.clear()  # one case at a time
        rng = np.random.default_rng(0)
        images = jnp.asarray(rng.uniform(-1, 1, (batch, res, res, 3)),
                             jnp.float32)
        labels = jnp.asarray(rng.integers(0, 1000, (batch,)), jnp.int32)
        stock = models.get_model(name, num_classes=1000)
        params = jax.jit(lambda r: stock.init(r, images[:1])['params'])(
            jax.random.key(0))
        tx = optax.adamw(1e-4, weight_decay=1e-4)
        shared[key] = (images, labels, params, tx, jax.jit(tx.init)(params))
      images, labels, params, tx, opt_state = shared[key]
      parts = hooks.microbatches(perf, b['mode'], batch, resolution=res)
      t0 = time.perf_counter()
      if b['mode'] == 'infer':
        fn = bench.make_infer_step(model, parts).lower(params,
                                                       images).compile()
        call = lambda fn=fn: fn(params, images)
      else:
        step = bench.make_train_step(model, tx, parts, donate=False)
        fn = step.lower(params, opt_state, images, labels).compile()
        call = lambda fn=fn: fn(params, opt_state, images, labels)[2]
      compile_s = time.perf_counter() - t0
      if allocator == 'thp':  # the step's temporaries on huge pages
        host_malloc.reserve(fn.memory_analysis().temp_size_in_bytes,
                            huge_pages=True)
      for _ in range(b.get('warmup', 1)):
        jax.block_until_ready(call())
      sid = len(steps)
      steps[sid] = call
      out.write(json.dumps(dict(id=sid, compile_s=compile_s,
                                microbatches=parts)) + '\n')
    elif 'step' in req:
      f0, t0 = host_malloc.minor_faults(), time.perf_counter()
      jax.block_until_ready(steps[req['step']]())
      t = time.perf_counter() - t0
      out.write(json.dumps(dict(seconds=t, faults=host_malloc.minor_faults()
                                - f0)) + '\n')
    elif 'clear' in req:
      steps.clear()
      shared.clear()
      out.write(json.dumps(dict(cleared=True)) + '\n')
  return 0


class Worker:
  """One child process per allocator setting (`--_worker`)."""

  def __init__(self, allocator: str):
    env = dict(os.environ)
    if allocator == 'hugetlb':
      tun = env.get('GLIBC_TUNABLES', '')
      env['GLIBC_TUNABLES'] = ':'.join(
          filter(None, [tun, 'glibc.malloc.hugetlb=1']))
    self.allocator = allocator
    self._proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--_worker',
         f'--_allocator={allocator}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

  def ask(self, **req) -> dict:
    self._proc.stdin.write(json.dumps(req) + '\n')
    self._proc.stdin.flush()
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f'the {self.allocator} worker died (see stderr)')
    return json.loads(line)

  def close(self):
    self._proc.stdin.close()
    self._proc.wait(timeout=60)


# ---------------------------------------------------------------- driver


def run_case(workers: list[Worker], case: str, mode: str,
             args: argparse.Namespace, log=print) -> list[dict[str, Any]]:
  """Times every combination of `case` in `mode` in every worker; rows."""
  name, family = CASES[case]
  res, batch = args.resolution, args.batch
  if case == 'tiny':
    res, batch = 32, 4
  pieces = None if args.pieces is None else [
      p for p in args.pieces.split(',') if p]
  combos = combinations(family, pieces, args.max_combinations)
  entries = []  # (worker, combo, id, compile_s, microbatches)
  for w in workers:
    w.ask(clear=True)
    for combo in combos:
      r = w.ask(build=dict(model=name, resolution=res, batch=batch,
                           mode=mode, combo=combo, warmup=args.warmup))
      log(f'  compiled {case} {mode} [{w.allocator}] {label(combo)}: '
          f'{r["compile_s"]:.1f} s')
      entries.append((w, combo, r['id'], r['compile_s'], r['microbatches']))
  times = [[] for _ in entries]
  faults = [[] for _ in entries]
  t_start, load_start = time.time(), os.getloadavg()[0]
  for rnd in range(args.rounds):
    order = list(range(len(entries)))
    shift = rnd % len(order)
    order = order[shift:] + order[:shift]
    if rnd % 2:
      order.reverse()
    for i in order:
      r = entries[i][0].ask(step=entries[i][2])
      times[i].append(r['seconds'])
      faults[i].append(r['faults'])
  timed = dict(
      timed_from=datetime.datetime.fromtimestamp(
          t_start, datetime.timezone.utc).strftime('%Y-%m-%d %H:%M'),
      timed_to=datetime.datetime.now(datetime.timezone.utc).strftime(
          '%H:%M'),
      load_avg=(load_start, os.getloadavg()[0]))
  rows = []
  stock_ips = {}
  for (w, combo, _, compile_s, parts), ts, fs in zip(entries, times, faults):
    med = statistics.median(ts)
    row = dict(case=case, model=name, mode=mode, resolution=res, batch=batch,
               allocator=w.allocator, combo=combo, label=label(combo),
               microbatches=parts, img_per_s=batch / med, step_s=ts,
               faults_per_step=statistics.median(fs), faults=fs,
               compile_s=compile_s, **timed)
    rows.append(row)
    if row['label'] == 'stock':
      stock_ips[w.allocator] = row['img_per_s']
  base = stock_ips.get(workers[0].allocator)
  for row in rows:
    row['ratio_to_stock'] = (row['img_per_s'] / base) if base else None
  return rows


def print_table(rows: list[dict[str, Any]], log=print) -> None:
  """The rows of one case and mode, fastest first."""
  if not rows:
    return
  r0 = rows[0]
  fastest = max(rows, key=lambda r: r['img_per_s'])
  log(f'\n{r0["case"]} ({r0["model"]}) {r0["mode"]}, fp32, batch '
      f'{r0["batch"]}, {r0["resolution"]} px; {len(r0["step_s"])} rounds, '
      'median; ratio to stock '
      f'[{rows[0]["allocator"]}]; timed {r0["timed_from"]}-{r0["timed_to"]} '
      f'UTC, load average {r0["load_avg"][0]:.1f} -> {r0["load_avg"][1]:.1f}',
      flush=True)
  log(f'  {"allocator":9} {"combination":58} {"img/s":>7} {"ratio":>6} '
      f'{"faults/step":>11} {"k":>2}')
  for r in sorted(rows, key=lambda r: -r['img_per_s']):
    mark = '  <- fastest' if r is fastest else ''
    log(f'  {r["allocator"]:9} {r["label"]:58} {r["img_per_s"]:7.2f} '
        f'{r["ratio_to_stock"] or 0:6.3f} {r["faults_per_step"]:11.0f} '
        f'{r["microbatches"]:2d}{mark}', flush=True)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--cases', default='ti16,s16,r26_s32,b16,mixer_b16')
  p.add_argument('--modes', default='infer,train')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--warmup', type=int, default=1,
                 help='steps per combination after compiling')
  p.add_argument('--pieces', default=None,
                 help='comma-separated pieces to vary (default: all that '
                 f'apply; empty: stock only); of {", ".join(PIECES)}')
  p.add_argument('--max_combinations', type=int, default=16)
  p.add_argument('--allocators', default='mallopt',
                 help=f'comma-separated, of {", ".join(ALLOCATORS)}; the '
                 'first is the ratio\'s reference')
  p.add_argument('--json', default=None, help='write the rows here')
  p.add_argument('--_worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--_allocator', default='default', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args._worker:  # pylint: disable=protected-access
    return _worker(args._allocator)  # pylint: disable=protected-access
  cases = [c for c in args.cases.split(',') if c]
  modes = [m for m in args.modes.split(',') if m]
  allocators = [a for a in args.allocators.split(',') if a]
  for value, allowed, what in ((cases, CASES, 'case'), (modes, MODES, 'mode'),
                               (allocators, ALLOCATORS, 'allocator')):
    bad = [v for v in value if v not in allowed]
    if bad:
      print(f'error: unknown {what} {bad[0]!r}; allowed: '
            f'{", ".join(allowed)}', file=sys.stderr)
      return 1
  if args.pieces:
    bad = [p for p in args.pieces.split(',') if p and p not in PIECES]
    if bad:
      print(f'error: unknown piece {bad[0]!r}; allowed: '
            f'{", ".join(PIECES)}', file=sys.stderr)
      return 1
  start = datetime.datetime.now(datetime.timezone.utc)
  print(f'start {start:%Y-%m-%d %H:%M} UTC, load average '
        f'{os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs', flush=True)
  workers = [Worker(a) for a in allocators]
  all_rows = []
  try:
    for case in cases:
      for mode in modes:
        rows = run_case(workers, case, mode, args,
                        log=lambda s: print(s, flush=True))
        print_table(rows)
        all_rows += rows
        if args.json:  # after every case: a long run keeps what it has
          with open(args.json, 'w') as f:
            json.dump(all_rows, f, indent=1)
  finally:
    for w in workers:
      w.close()
  end = datetime.datetime.now(datetime.timezone.utc)
  print(f'\nend {end:%Y-%m-%d %H:%M} UTC, load average '
        f'{os.getloadavg()[0]:.2f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
