"""Where a step's time goes: per-XLA-op times from a real profiler trace.

    python benchmarks/profile_step.py --model=S/16 --mode=train
    python benchmarks/profile_step.py --model=Ti/16 --mode=infer --top=40
    python benchmarks/profile_step.py --model=mu/16 --resolution=32 \
        --batch=2 --mode=train --top=5                       # smoke

Compiles the same step as `vit_jax.perf.bench` (inference, or one AdamW step),
runs it twice to warm up, then once under `jax.profiler.trace` with a
Perfetto trace, and joins the trace's per-op durations with the optimized
HLO of the step. Prints, largest first, one row per kind of op: summed
milliseconds, how many ops of that kind ran, the output shape, the ops
fused into it (e.g. `dot x1`, or `exponential, reduce, ...`) and, for
matmuls, the operand shapes and contracting dimensions, with achieved
GFLOP/s. Durations of ops that XLA runs concurrently overlap, so the column
can sum to more than the step's wall time (printed first).

The trace is kept under `--trace_dir` for TensorBoard / Perfetto, with the
optimized HLO (`optimized_hlo.txt`). On a GPU the rows are the kernels of the
device's streams (library kernels, e.g. cuBLAS or cuDNN, by kernel name).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from vit_jax.perf import bench  # pylint: disable=g-import-not-at-top
from vit_jax.perf import hooks  # pylint: disable=g-import-not-at-top
from vit_jax.perf import host_malloc  # pylint: disable=g-import-not-at-top

_INSTR = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$')
_COMP = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$')


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(computation -> instruction lines, instruction -> (shape, op, line))."""
  comps, insts, cur = {}, {}, None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m:
      cur = m.group(1)
      comps[cur] = []
      continue
    if cur is None:
      continue
    comps[cur].append(line)
    m = _INSTR.match(line)
    if m:
      insts[m.group(1)] = (m.group(2), m.group(3), line)
  return comps, insts


def _dot_flops(line: str, insts_in_body: dict) -> int:
  """2 x MACs of a dot line: 2 x |output| x |contracted|."""
  m = re.search(r'dot\(%?([\w.\-]+), %?([\w.\-]+)\)', line)
  out = re.match(r'\s*(?:ROOT )?%?[\w.\-]+ = \w+\[([\d,]*)\]', line)
  con = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line)
  if not (m and out and con) or m.group(1) not in insts_in_body:
    return 0
  lhs = re.match(r'\w+\[([\d,]*)\]', insts_in_body[m.group(1)])
  if not lhs:
    return 0
  dims = [int(d) for d in lhs.group(1).split(',') if d]
  n_out = 1
  for d in out.group(1).split(','):
    n_out *= int(d) if d else 1
  k = 1
  for i in con.group(1).split(','):
    k *= dims[int(i)] if i else 1
  return 2 * n_out * k


def _dims(shape: str) -> list[int]:
  return [int(d) for d in shape.split(',') if d]


def _gemm_call_flops(line: str) -> int:
  """2 x MACs of a custom call of the OpenBLAS kernels (`vit_jax/kernels`:
  products, implicit-GEMM convolutions and their kernel gradients), from the
  output and operand shapes; 0 for any other custom call."""
  target = re.search(r'custom_call_target="(vit_jax_cpu_\w+)"', line)
  out = re.match(r'\s*(?:ROOT )?%?[\w.\-]+ = \w+\[([\d,]*)\]', line)
  ops = re.search(r'operand_layout_constraints=\{\w+\[([\d,]*)\]'
                  r'\{[\d,]*\}, \w+\[([\d,]*)\]', line)
  if not (target and out and ops):
    return 0
  a, b, n_out = _dims(ops.group(1)), _dims(ops.group(2)), 1
  for d in _dims(out.group(1)):
    n_out *= d
  if target.group(1) == 'vit_jax_cpu_conv':  # x, kernel [k, O]
    return 2 * n_out * b[0]
  if target.group(1) == 'vit_jax_cpu_conv_kernel_grad':  # x, dy [B, OH, OW, O]
    return 2 * n_out * b[0] * b[1] * b[2]
  k = a[-2] if re.search(r'trans_a = true', line) else a[-1]
  return 2 * n_out * k


def describe(name: str, comps: dict, insts: dict) -> tuple[str, int]:
  """A kind-of-op key for instruction `name`, and its matmul FLOPs."""
  shape, op, line = insts[name]
  called = re.search(r'calls=%?([\w.\-]+)', line)
  body = comps.get(called.group(1), []) if called else [line]
  shapes = {}
  for l in body:
    m = _INSTR.match(l)
    if m:
      shapes[m.group(1)] = m.group(2)
  if not called:  # a lone op: its operands are in the entry computation
    shapes.update({k: v[0] for k, v in insts.items()})
  ops = collections.Counter()
  dots, flops = [], 0
  for l in body:
    m = _INSTR.match(l)
    if not m or m.group(3) in ('parameter', 'constant', 'bitcast',
                               'broadcast'):
      continue
    ops[m.group(3)] += 1
    if m.group(3) == 'custom-call':
      flops += _gemm_call_flops(l)
    if m.group(3) == 'dot':
      operands = re.search(r'dot\(%?([\w.\-]+), %?([\w.\-]+)\)', l)
      dims = re.search(r'((?:lhs_batch_dims=\{[\d,]*\}, )?'
                       r'lhs_contracting_dims=\{[\d,]*\}).*?'
                       r'((?:rhs_batch_dims=\{[\d,]*\}, )?'
                       r'rhs_contracting_dims=\{[\d,]*\})', l)
      if operands:
        a = shapes.get(operands.group(1), '?').split('{')[0]
        b = shapes.get(operands.group(2), '?').split('{')[0]
        dots.append(f'{a} x {b} ({dims.group(1)}; {dims.group(2)})'
                    if dims else f'{a} x {b}')
      flops += _dot_flops(l, shapes)
  kind = ', '.join(f'{k} x{v}' for k, v in ops.most_common(6))
  key = f'{shape.split("{")[0]} <- {kind}'
  if dots:
    key += ' | ' + '; '.join(dots)
  return key, flops


def _device_streams(events: list) -> Optional[set]:
  """(pid, tid) of the GPU's kernel streams in a trace, or None (a CPU trace:
  ops run on host threads). On a GPU the host threads also carry events named
  after the ops they launch, and derived lines ('XLA Ops') repeat the kernels:
  only the device's 'Stream' lines count."""
  gpu_pids = {e['pid'] for e in events
              if e.get('ph') == 'M' and e.get('name') == 'process_name'
              and 'GPU' in str(e.get('args', {}).get('name', ''))}
  if not gpu_pids:
    return None
  return {(e['pid'], e['tid']) for e in events
          if e.get('ph') == 'M' and e.get('name') == 'thread_name'
          and e['pid'] in gpu_pids
          and str(e.get('args', {}).get('name', '')).startswith('Stream')}


def op_table(trace_file: str, hlo_text: str) -> list[tuple]:
  """Rows (total_ms, count, kind, gflops_per_s) from a Perfetto trace.

  On a GPU an op is a kernel on one of the device's streams, named after its
  HLO instruction by the trace's `hlo_op` argument; kernels with no such
  instruction (e.g. inside a library call) are rows of their own kernel name.
  """
  with gzip.open(trace_file) as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  comps, insts = parse_hlo(hlo_text)
  streams = _device_streams(events)
  total, count, flops = (collections.Counter(), collections.Counter(),
                         collections.Counter())
  for e in events:
    if e.get('ph') != 'X':
      continue
    if streams is not None:
      if (e.get('pid'), e.get('tid')) not in streams:
        continue
      name = str(e.get('args', {}).get('hlo_op', e.get('name')))
      if name in insts:
        key, f = describe(name, comps, insts)
      else:
        key, f = f'kernel {str(e.get("name"))[:100]}', 0
    elif e.get('name') in insts:
      key, f = describe(e['name'], comps, insts)
    else:
      continue
    total[key] += e.get('dur', 0)
    count[key] += 1
    flops[key] += f
  rows = []
  for key, us in total.most_common():
    rate = flops[key] / (us * 1e-6) / 1e9 if us and flops[key] else None
    rows.append((us / 1e3, count[key], key, rate))
  return rows


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--model', default='S/16')
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--dtype', default='float32', choices=list(bench.DTYPES))
  p.add_argument('--mode', default='train', choices=list(bench.MODES))
  p.add_argument('--attention_impl', default=None, choices=['xla', 'cudnn'])
  p.add_argument('--parallel_microbatches', type=int, default=0,
                 help='independent micro-batches per step (0: automatic)')
  p.add_argument('--perf', default='',
                 help='config.perf settings KEY=VALUE,... (vit_jax.perf.hooks)')
  p.add_argument('--top', type=int, default=25, help='rows to print')
  p.add_argument('--trace_dir', default='/tmp/vit_jax_profile')
  return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  perf = bench.parse_perf(args.perf)
  if args.attention_impl:
    perf['attention'] = {'xla': 'einsum'}.get(args.attention_impl,
                                              args.attention_impl)
  perf.setdefault('microbatches', args.parallel_microbatches)
  model = bench.build_model(args.model, perf, num_classes=1000,
                            dtype=bench.DTYPES[args.dtype])
  size = (args.batch, args.resolution, args.resolution, 3)
  images = jax.random.uniform(jax.random.key(0), size, jnp.float32, -1, 1)
  labels = jnp.zeros((args.batch,), jnp.int32)
  params = jax.jit(lambda k: model.init(k, images[:1])['params'])(
      jax.random.key(1))
  parts = hooks.microbatches(perf, args.mode, args.batch,
                             resolution=args.resolution)
  compiled, call, parts = bench.compile_step(
      model, args.mode, params, images, labels, parts)
  for _ in range(2):
    jax.block_until_ready(call())
  run_dir = os.path.join(args.trace_dir, time.strftime('%Y%m%d-%H%M%S'))
  with jax.profiler.trace(run_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    wall = time.perf_counter() - t0
  traces = glob.glob(os.path.join(run_dir, '**', '*.trace.json.gz'),
                     recursive=True)
  if not traces:
    print(f'error: no Perfetto trace written under {run_dir}',
          file=sys.stderr)
    return 1
  hlo = compiled.as_text()
  with open(os.path.join(run_dir, 'optimized_hlo.txt'), 'w') as f:
    f.write(hlo)
  rows = op_table(traces[0], hlo)
  print(f'{args.model} {args.resolution}px batch {args.batch} {args.dtype} '
        f'{args.mode} in {parts} micro-batches on {bench.device_name()}: '
        f'step {wall * 1e3:.1f} ms '
        f'(profiled); {len(rows)} kinds of op, {sum(r[0] for r in rows):.1f} '
        f'ms in all; trace and optimized HLO in {run_dir}')
  print('      ms  count  GFLOP/s  output <- fused ops | matmul operands')
  for ms, n, key, rate in rows[:args.top]:
    r = f'{rate:8.1f}' if rate else '       -'
    print(f'{ms:8.1f} {n:6d} {r}  {key}')
  return 0


if __name__ == '__main__':
  host_malloc.apply('auto')  # before XLA starts its threads
  sys.exit(main())
