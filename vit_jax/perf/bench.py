"""Throughput benchmark of one model: img/s, FLOPs, MFU, memory, compile time.

    python -m vit_jax.perf.bench --model=B/16 --resolution=224 --batch=32 \
        --dtype=float32 --mode=infer
    python -m vit_jax.perf.bench --model=B/16 --dtype=bfloat16 --mode=train --remat

Measures in one process, on the default JAX device:
  img/s          median over `--steps` timed steps (after `--warmup` steps);
                 each step ends with `block_until_ready`.
  FLOPs          analytic, 2 x multiply-accumulates of every matmul / conv of
                 the forward pass (`vit_jax.perf.flops`); a training step
                 counts 3 x forward (forward + backward w.r.t. activations and
                 weights), remat recomputation not counted (model FLOPs).
  TFLOP/s, MFU   achieved FLOP/s, and that over the peak: `--peak_tflops`, or
                 on GPU/TPU the datasheet dense bf16 peak of the device
                 (`DATASHEET_BF16_TFLOPS`), or on CPU the measured matmul peak
                 (`matmul_peak_tflops`, 2 n^3 FLOPs of an n x n fp32 product).
  memory         peak device memory from the allocator (GPU/TPU), else the
                 compiled program's arguments + outputs + temporaries (XLA's
                 memory analysis), and the process's peak RSS.
  compile time   lowering + XLA compilation of the step, seconds.

Training steps are AdamW (optax) on softmax cross-entropy with random labels;
parameters and optimizer state are donated to the step. With
`--dtype=bfloat16` compute is bf16 while parameters, optimizer state, softmax
and the loss stay fp32.

No tensorflow and no ml_collections are imported here: this module runs on
machines that have neither.
"""

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.extend
import jax.numpy as jnp
import optax

from vit_jax import models
from vit_jax.perf import flops as flops_lib
from vit_jax.perf import hooks
from vit_jax.perf import host_malloc
from vit_jax.perf import microbatch

MODES = ('infer', 'train')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# Dense (no sparsity) bf16 tensor-core peak per chip, TFLOP/s, datasheets.
# Matched as substrings of `device.device_kind`, first match wins.
DATASHEET_BF16_TFLOPS = (
    ('H100 PCIe', 756.0),
    ('H100 NVL', 835.0),
    ('H100', 989.0),      # H100 SXM5
    ('H200', 989.0),
    ('GH200', 989.0),
    ('A100', 312.0),
    ('L4', 121.0),
    ('TPU v4', 275.0),
    ('TPU v5 lite', 197.0),
    ('TPU v5e', 197.0),
    ('TPU v5p', 459.0),
    ('TPU v6', 918.0),
)


@dataclasses.dataclass
class Result:
  """One benchmark row. Times in seconds, FLOPs per image, memory in bytes."""
  model: str
  resolution: int
  batch: int
  dtype: str
  mode: str
  remat: bool
  attention_impl: Optional[str]
  perf: dict                   # the config.perf settings, resolved
  microbatches: int            # independent micro-batches per step
  device: str
  num_params: int
  img_per_s: float
  step_s_median: float
  step_s_all: list[float]
  forward_flops_per_img: int
  flops_per_img: int           # forward (infer) or 3 x forward (train)
  tflops: float                # achieved
  peak_tflops: float
  peak_source: str
  mfu: float                   # tflops / peak_tflops
  compile_s: float
  device_peak_bytes: Optional[int]
  device_peak_source: str
  host_peak_rss_bytes: int

  def summary(self) -> str:
    parts = (f' in {self.microbatches} micro-batches'
             if self.microbatches > 1 else '')
    mem = (f'{self.device_peak_bytes / 2**30:.2f} GiB '
           f'({self.device_peak_source})' if self.device_peak_bytes
           else 'n/a')
    return (f'{self.model} {self.resolution}px batch {self.batch} '
            f'{self.dtype} {self.mode}{" remat" if self.remat else ""}'
            f'{parts} on '
            f'{self.device}: {self.img_per_s:.2f} img/s '
            f'({self.step_s_median * 1e3:.1f} ms/step), '
            f'{self.flops_per_img / 1e9:.2f} GFLOP/img, '
            f'{self.tflops:.3f} TFLOP/s = {100 * self.mfu:.1f}% of '
            f'{self.peak_tflops:.3f} TFLOP/s ({self.peak_source}), '
            f'compile {self.compile_s:.1f} s, peak memory {mem}')


def device_name(device=None) -> str:
  device = device or jax.devices()[0]
  return f'{device.platform}:{device.device_kind}'


def time_fn(fn: Callable[[], Any], steps: int) -> list[float]:
  """Seconds of each of `steps` calls of `fn`, each blocked until ready."""
  out = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


def matmul_peak_tflops(n: int = 2048, dtype=jnp.float32,
                       steps: int = 5) -> float:
  """Measured TFLOP/s of an n x n x n matrix product (2 n^3 FLOPs), median."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  jax.block_until_ready(f(a, b))
  t = statistics.median(time_fn(lambda: f(a, b), steps))
  return 2 * n**3 / t / 1e12


def default_peak(device=None) -> tuple[float, str]:
  """(TFLOP/s, where it comes from) for MFU on `device`."""
  device = device or jax.devices()[0]
  if device.platform == 'cpu':
    return matmul_peak_tflops(), 'measured 2048^3 fp32 jax matmul'
  for key, tf in DATASHEET_BF16_TFLOPS:
    if key.lower() in device.device_kind.lower():
      return tf, f'datasheet dense bf16, {key}'
  raise ValueError(f'no datasheet peak known for device {device.device_kind!r}'
                   '; pass --peak_tflops')


def _jaxpr_flops(jaxpr) -> int:
  # pylint: disable=protected-access
  total = 0
  for eqn in jaxpr.eqns:
    total += flops_lib._eqn_flops(eqn)
    mult = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += mult * _jaxpr_flops(sub)
  return total


def forward_flops(model, image_size: Sequence[int]) -> int:
  """`flops.forward_flops`, also on jax >= 0.11 (no jax.core helper)."""
  try:
    return flops_lib.forward_flops(model, image_size)
  except AttributeError:  # jax.core.jaxprs_in_params was removed in 0.11
    x = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return _jaxpr_flops(jax.make_jaxpr(model.apply)(variables, x).jaxpr)


def make_infer_step(model, microbatches: int = 1) -> Callable:
  """(params, images [B,H,W,3]) -> logits [B, classes] in float32, jitted.

  `microbatches`: independent micro-batches per step (`vit_jax.perf.microbatch`).
  """
  def step(params, images):
    return microbatch.map_batch(
        lambda x: model.apply({'params': params}, x, train=False).astype(
            jnp.float32), images, microbatches)
  return jax.jit(step)


def make_train_step(model, tx: optax.GradientTransformation,
                    microbatches: int = 1, donate: bool = True) -> Callable:
  """(params, opt_state, images, labels) -> (params, opt_state, loss).

  Parameters and optimizer state are donated (updated in place) unless
  `donate=False`.
  `microbatches`: independent micro-batches per step (`vit_jax.perf.microbatch`).
  """
  def loss_fn(params, images, labels, rng):
    del rng  # no dropout in the benchmarked models
    logits = model.apply({'params': params}, images, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels).mean()

  grad_fn = microbatch.mean_value_and_grad(loss_fn, microbatches)

  def step(params, opt_state, images, labels):
    loss, grads = grad_fn(params, images, labels, None)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def _reserve_host_memory(compiled) -> None:
  """On CPU under `host_malloc`'s tunables: room for two step buffers in the
  heap now, so that a step allocating its buffer before the last one is
  freed does not grow the heap (page faults) inside the timed steps."""
  if jax.default_backend() != 'cpu':
    return
  try:
    temp = compiled.memory_analysis().temp_size_in_bytes
  except Exception:  # pylint: disable=broad-except
    return
  host_malloc.reserve(2 * temp)


def parse_perf(text: Optional[str]) -> dict[str, Any]:
  """'cpu_gemm=on,microbatches=2' -> {'cpu_gemm': 'on', 'microbatches': 2}
  (`config.perf` keys, `vit_jax.perf.hooks`), validated."""
  out = {}
  for tok in filter(None, (t.strip() for t in (text or '').split(','))):
    key, sep, value = tok.partition('=')
    if not sep:
      raise ValueError(f'--perf: {tok!r} is not KEY=VALUE')
    out[key] = int(value) if key in hooks.INTS and value.isdigit() else value
  hooks.validate(out, prefix='--perf')
  return out


def build_model(model_name: str, perf=None, devices=None, **overrides):
  """`models.get_model` with the computation hooks of `perf` (`config.perf`
  settings; None: all 'auto') for `devices` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  hook_kw = hooks.model_overrides(perf or {}, devices[0].platform,
                                  len(devices), model_name)
  return models.get_model(model_name, **hook_kw, **overrides)


def compile_step(model, mode: str, params, images, labels=None,
                 microbatches: int = 1
                 ) -> tuple[Any, Callable[[], Any], int]:
  """(compiled step, no-argument callable running it once, micro-batches).

  'infer': the forward of `make_infer_step`. 'train': one AdamW step of
  `make_train_step` (lr 1e-4, weight decay 1e-4); the callable carries the
  updated (donated) parameters and optimizer state from call to call.
  `microbatches`: independent micro-batches per step (`hooks.microbatches`
  resolves `config.perf.microbatches` to it).
  """
  if mode == 'infer':
    compiled = make_infer_step(model, microbatches).lower(
        params, images).compile()
    _reserve_host_memory(compiled)
    return compiled, lambda: compiled(params, images), microbatches
  tx = optax.adamw(1e-4, weight_decay=1e-4)
  state = [params, jax.jit(tx.init)(params)]
  compiled = make_train_step(model, tx, microbatches).lower(
      state[0], state[1], images, labels).compile()
  _reserve_host_memory(compiled)

  def call():
    state[0], state[1], loss = compiled(state[0], state[1], images, labels)
    return loss
  return compiled, call, microbatches


def _device_peak_bytes(device, compiled) -> tuple[Optional[int], str]:
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    pass
  if stats and stats.get('peak_bytes_in_use'):
    return int(stats['peak_bytes_in_use']), 'allocator peak'
  try:
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes
             + m.temp_size_in_bytes - m.alias_size_in_bytes)
    return int(total), 'XLA memory analysis'
  except Exception:  # pylint: disable=broad-except
    return None, 'n/a'


def run(model_name: str = 'Ti/16', *, resolution: int = 224, batch: int = 32,
        dtype: str = 'float32', mode: str = 'infer', steps: int = 5,
        warmup: int = 2, remat: bool = False, num_classes: int = 1000,
        peak_tflops: Optional[float] = None, peak_source: str = 'given',
        attention_impl=None, parallel_microbatches: Optional[int] = None,
        model_overrides=None, perf=None,
        log: Callable[[str], None] = print) -> Result:
  """Benchmarks one configuration; see the module docstring.

  `perf`: `config.perf` settings (`vit_jax.perf.hooks`; missing keys
  'auto'); `attention_impl` ('cudnn' / 'xla' / None) and
  `parallel_microbatches` (None: perf's) set perf's attention and
  microbatches.
  """
  if mode not in MODES:
    raise ValueError(f'mode={mode!r}; allowed: {", ".join(MODES)}')
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r}; allowed: {", ".join(DTYPES)}')
  if steps < 1 or warmup < 0 or batch < 1:
    raise ValueError(f'need steps >= 1, warmup >= 0, batch >= 1; got '
                     f'steps={steps} warmup={warmup} batch={batch}')
  perf = dict(perf or {})
  if attention_impl:
    perf['attention'] = {'xla': 'einsum'}.get(attention_impl, attention_impl)
  if parallel_microbatches is not None:
    perf['microbatches'] = parallel_microbatches
  hooks.validate(perf)
  resolved = hooks.resolve(perf, jax.default_backend(), jax.device_count())
  overrides = dict(model_overrides or {})
  overrides['dtype'] = DTYPES[dtype]
  if remat:
    overrides['remat'] = True
  model = build_model(model_name, perf, num_classes=num_classes, **overrides)
  device = jax.devices()[0]
  if peak_tflops is None:
    peak_tflops, peak_source = default_peak(device)

  size = (resolution, resolution)
  # Model FLOPs: counted on the stock twin (a cuDNN attention call or an
  # OpenBLAS product is opaque to the jaxpr count); the same function.
  fwd = forward_flops(
      models.get_model(model_name, num_classes=num_classes, **overrides),
      size)
  per_img = fwd if mode == 'infer' else 3 * fwd
  k_img, k_lab, k_init = jax.random.split(jax.random.key(0), 3)
  images = jax.random.uniform(k_img, (batch, *size, 3), jnp.float32, -1, 1)
  labels = jax.random.randint(k_lab, (batch,), 0, num_classes)
  params = jax.jit(lambda k: model.init(k, images[:1])['params'])(k_init)
  num_params = flops_lib.count_params(params)
  log(f'{model_name}: {num_params / 1e6:.2f} M params, '
      f'{fwd / 1e9:.3f} GFLOPs forward per image at {resolution}px')

  t0 = time.perf_counter()
  parts = hooks.microbatches(perf, mode, batch, resolution=resolution)
  compiled, call, parts = compile_step(model, mode, params, images, labels,
                                       parts)
  compile_s = time.perf_counter() - t0
  log(f'compiled in {compile_s:.1f} s; warm-up {warmup} steps')
  time_fn(call, warmup)
  times = time_fn(call, steps)
  med = statistics.median(times)
  ips = batch / med
  tflops = per_img * ips / 1e12
  mem, mem_src = _device_peak_bytes(device, compiled)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return Result(
      model=model_name, resolution=resolution, batch=batch, dtype=dtype,
      mode=mode, remat=remat, attention_impl=attention_impl,
      perf=dict(resolved, microbatches=parts), microbatches=parts, device=device_name(device),
      num_params=num_params, img_per_s=ips, step_s_median=med,
      step_s_all=times, forward_flops_per_img=fwd, flops_per_img=per_img,
      tflops=tflops, peak_tflops=peak_tflops, peak_source=peak_source,
      mfu=tflops / peak_tflops, compile_s=compile_s, device_peak_bytes=mem,
      device_peak_source=mem_src, host_peak_rss_bytes=rss)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m vit_jax.perf.bench',
      description=__doc__.split('\n')[0] + ' Prints one summary line.',
      epilog='example: python -m vit_jax.perf.bench --model=B/16 '
      '--dtype=bfloat16 --mode=train --remat')
  p.add_argument('--model', default='Ti/16',
                 help='registry name, e.g. B/16, R50+B/16, Mixer-B_16 '
                 '(default %(default)s)')
  p.add_argument('--resolution', type=int, default=224,
                 help='input side in pixels (default %(default)s)')
  p.add_argument('--batch', type=int, default=32,
                 help='images per step (default %(default)s)')
  p.add_argument('--dtype', default='float32', choices=list(DTYPES),
                 help='compute dtype; parameters stay float32 (default '
                 '%(default)s)')
  p.add_argument('--mode', default='infer', choices=list(MODES),
                 help='infer: forward pass; train: AdamW step (default '
                 '%(default)s)')
  p.add_argument('--steps', type=int, default=5,
                 help='timed steps, the median is reported (default '
                 '%(default)s)')
  p.add_argument('--warmup', type=int, default=2,
                 help='untimed steps after compiling (default %(default)s)')
  p.add_argument('--remat', action='store_true',
                 help='rematerialize each block in the backward pass')
  p.add_argument('--attention_impl', default=None, choices=['xla', 'cudnn'],
                 help='ViT attention kernel (default: XLA decides)')
  p.add_argument('--parallel_microbatches', type=int, default=None,
                 help='independent micro-batches per step (0: automatic, '
                 'see vit_jax.perf.microbatch)')
  p.add_argument('--perf', default='',
                 help='config.perf settings, KEY=VALUE,... (see '
                 'vit_jax.perf.hooks); unset keys: auto')
  p.add_argument('--num_classes', type=int, default=1000,
                 help='head width (default %(default)s)')
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='peak for MFU (default: datasheet / measured)')
  p.add_argument('--json', default=None,
                 help='append the full result as one JSON line to this file')
  return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  return parser().parse_args(argv)


def main(argv: Optional[Sequence[str]] = None,
         set_allocator: bool = False) -> int:
  """The command line; `set_allocator`: apply `perf.host_malloc` first (a
  fresh process, before XLA starts its threads)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    perf = parse_perf(args.perf)
    if set_allocator:
      host_malloc.apply(perf.get('host_malloc', 'auto'))
    r = run(args.model, resolution=args.resolution, batch=args.batch,
            dtype=args.dtype, mode=args.mode, steps=args.steps,
            warmup=args.warmup, remat=args.remat,
            num_classes=args.num_classes, peak_tflops=args.peak_tflops,
            attention_impl=args.attention_impl,
            parallel_microbatches=args.parallel_microbatches, perf=perf)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(r.summary())
  if args.json:
    with open(args.json, 'a') as f:
      f.write(json.dumps(dataclasses.asdict(r)) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main(set_allocator=True))
