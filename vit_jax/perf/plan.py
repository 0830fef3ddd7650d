"""Memory and compile-time plan of the real training step, nothing allocated.

    python -m vit_jax.perf.plan --model=B/16 --resolution=224 --batch=256 \
        --dtype=bfloat16 --remat=on --mesh=data=8 --devices=8
    python -m vit_jax.perf.plan --model=H/14 --batch=2048 --mesh=fsdp=64 \
        --devices=64 --json
    python -m vit_jax.perf.plan --model=Ti/16 --batch=8 --devices=1 --measure

The config is `configs/vit.py` (the fine-tuning recipe: SGD momentum with a
bfloat16 accumulator, fp32 parameters, grad clipping) with the flags and any
`--set KEY=VALUE` applied, on the synthetic dataset (so the head has its 10
classes: a 1000-class head would add 990 x width parameters, 3 % of Ti/16,
0.2 % of H/14). The step is the one a run trains with: `train.setup(config)` builds
the mesh, model, optimizer and the shardings of the whole train state, and
`train.make_train_step` its jitted step; both are called here with
`--devices` simulated CPU devices (`--xla_force_host_platform_device_count`,
set before jax is imported: the command re-executes itself with it).
Parameters and optimizer state are `jax.eval_shape` structs with their
shardings, the batch a `jax.ShapeDtypeStruct` split over the batch axes; the
step is lowered and compiled (XLA:CPU), never run.

Printed per device, in bytes (and GiB):
  parameters, optimizer state   the shards each device holds, from the
                                shardings (shape of a shard x item size);
  arguments                     XLA: everything the step reads (the state
                                above, step, rng, the batch shard);
  outputs                       XLA: the new state and the metrics;
  aliased                       XLA: outputs written in place into donated
                                arguments (the state is donated);
  temporaries                   XLA: one buffer for everything else live
                                during the step (activations kept for the
                                backward pass, gradients, workspace), its
                                size from XLA's buffer assignment (a heap
                                simulation of the live ranges);
  peak                          arguments + outputs - aliased + temporaries:
                                what the device holds at once when all of
                                them are live (an upper bound XLA's buffer
                                assignment guarantees).
and the seconds to lower (trace to StableHLO) and compile (SPMD partitioning,
XLA's HLO passes and buffer assignment; machine-code optimization is off
unless `--full_compile`, see `FAST_COMPILE`). XLA:CPU is told to keep the
rematerialization barriers (`KEEP_REMAT`): without that, remat would not
change its program at all. With `--measure` (one device only) the compiled step
then runs once on real arrays and the process's peak resident memory growth
over the step (VmHWM after resetting it, minus VmRSS before the state is
created) is printed next to the plan.

The figures are XLA:CPU's. A GPU or TPU compiler fuses differently (its
temporaries may be smaller, or larger with its workspaces); parameters,
optimizer state and arguments are the same on every backend.
"""

import argparse
import ast
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
GiB = 2 ** 30
REMAT_BOOL = {'on': True, 'off': False, 'true': True, 'false': False}
_DEVICES_FLAG = '--xla_force_host_platform_device_count'
# Always: keep jax.checkpoint's optimization barriers. XLA:CPU expands them
# before its common-subexpression elimination, which then merges every
# recomputation back into the forward pass: remat does nothing on CPU (a
# toy chain of 8 checkpointed layers compiles to the same 47 dots with or
# without it). With the expander off, the CPU program recomputes (61 dots)
# and keeps only the block inputs, as the GPU and TPU compilers do; programs
# without remat have no barriers and do not change.
KEEP_REMAT = {'xla_disable_hlo_passes': 'cse_barrier_expander'}
# Unless `--full_compile`: XLA:CPU machine-code optimization off (what
# jax_disable_most_optimizations sets): the same HLO passes and buffer
# assignment, so the same memory figures (checked: ViT-Ti/16 on 1 and 8
# devices), compiled in ~60 % of the time.
FAST_COMPILE = {'xla_backend_optimization_level': 0,
                'xla_llvm_disable_expensive_passes': True}


def parse_mesh(values: Sequence[str], devices: int) -> dict[str, int]:
  """{'data', 'fsdp', 'tensor'} sizes from `--mesh` values such as
  'data=8', 'fsdp=8' or 'data=2,fsdp=4' (axes not named are 1; no --mesh at
  all is data=devices). Raises ValueError (one line) when the sizes do not
  multiply to `devices`."""
  axes = ('data', 'fsdp', 'tensor')
  if not values:
    return {'data': devices, 'fsdp': 1, 'tensor': 1}
  sizes = {a: 1 for a in axes}
  for value in values:
    for part in filter(None, value.split(',')):
      name, _, size = part.partition('=')
      if name not in axes or not size.isdigit() or int(size) < 1:
        raise ValueError(f'--mesh={value}: expected AXIS=SIZE with AXIS in '
                         f'{", ".join(axes)} and SIZE a positive integer')
      sizes[name] = int(size)
  if math.prod(sizes.values()) != devices:
    shown = ','.join(f'{a}={s}' for a, s in sizes.items())
    raise ValueError(f'--mesh {shown} needs {math.prod(sizes.values())} '
                     f'devices, --devices={devices}')
  return sizes


def check_args(args) -> dict[str, int]:
  """One-line ValueErrors for flags that cannot make a plan (jax is not
  imported); returns the mesh sizes."""
  if args.devices < 1:
    raise ValueError(f'--devices={args.devices} must be positive')
  mesh = parse_mesh(args.mesh, args.devices)
  split = mesh['data'] * mesh['fsdp']
  if args.batch < 1 or args.batch % split:
    raise ValueError(
        f'--batch={args.batch} is not divisible by the {split} devices of the '
        f'batch axes (data x fsdp = {mesh["data"]} x {mesh["fsdp"]})')
  if args.resolution < 1:
    raise ValueError(f'--resolution={args.resolution} must be positive')
  if args.measure and args.devices != 1:
    raise ValueError(f'--measure runs the step on one device, got '
                     f'--devices={args.devices}')
  return mesh


def check_model(name: str) -> None:
  """One-line ValueError for a name the registry does not know."""
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  try:
    models.model_kwargs(name)
  except ValueError as e:
    raise ValueError(f'--model={name}: {e}') from None


def make_config(args, mesh: dict[str, int]):
  """`configs/vit.py:synthetic` with the model, size, batch, dtype, remat,
  mesh and `--set` overrides of `args` (an unlocked ConfigDict)."""
  # pylint: disable=g-import-not-at-top
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  from configs import vit as vit_config
  from vit_jax import config_lib
  from vit_jax import models
  config = vit_config.get_config('synthetic').unlock()
  config_lib.apply(config, config_lib.Arg('plan', None, {}),
                   models={'plan': (args.model, {})}, datasets={})
  config.image_size = args.resolution
  config.batch_size = config.eval_batch_size = args.batch
  config.dtype = args.dtype
  config.mesh.update(mesh)
  fields = {f.name for f in dataclasses.fields(
      models.model_kwargs(args.model)[0])}
  remat = args.remat.lower()
  if remat in REMAT_BOOL:
    if 'remat' in fields:
      config.model.remat = REMAT_BOOL[remat]
    elif REMAT_BOOL[remat]:
      raise ValueError(f'--remat={args.remat}: {args.model} has no remat '
                       'option')
  elif 'remat_policy' in fields:
    config.model.remat_policy = args.remat
  else:
    raise ValueError(f'--remat={args.remat}; allowed: on, off')
  for item in args.set:
    key, eq, value = item.partition('=')
    if not eq:
      raise ValueError(f'--set={item}: expected KEY=VALUE')
    if key.startswith('model.') and key[6:] not in config.model:
      config.model[key[6:]] = _literal(value)  # a new constructor override
      continue
    try:
      config_lib.set_value(config, key, value)
    except (KeyError, AttributeError):
      raise ValueError(f'--set={item}: the config has no key {key!r}'
                       ) from None
  return config


def _literal(text: str) -> Any:
  """'2' -> 2, 'true' -> True, '0.1' -> 0.1, anything else the string."""
  if text.lower() in ('true', 'false'):
    return text.lower() == 'true'
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


@dataclasses.dataclass
class Plan:
  """Per-device memory of one compiled train step (bytes) and its times (s).
  """
  model: str
  resolution: int
  batch: int
  batch_per_device: int
  dtype: str
  remat: str
  mesh: dict
  devices: int
  num_params: int
  param_bytes: int
  opt_state_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int
  peak_bytes: int          # argument + output - alias + temp
  lower_s: float
  compile_s: float
  full_compile: bool = False
  measured_peak_bytes: Optional[int] = None  # --measure: RSS growth


def _shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the
  largest of the devices' shares)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  total = 0
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total


def plan(config, devices, *, remat: str = '', measure: bool = False,
         full_compile: bool = False) -> Plan:
  """Lowers and compiles `config`'s train step on `devices` (a list of
  devices; CPU devices simulate any accelerator's mesh) and returns its
  per-device memory. `measure`: also run it once (see the module
  docstring); `full_compile`: without `FAST_COMPILE` (`KEEP_REMAT` always).
  """
  # pylint: disable=g-import-not-at-top
  import tempfile
  import jax
  import jax.numpy as jnp
  from vit_jax.training import train
  with tempfile.TemporaryDirectory() as workdir:
    s = train.setup(config, workdir, devices)
    s.checkpointer.close()
    step_fn = train.make_train_step(s)
    b = config.batch_size
    batch = {
        'image': jax.ShapeDtypeStruct(
            (b, config.image_size, config.image_size, 3), jnp.float32,
            sharding=s.batch_sharding),
        'label': jax.ShapeDtypeStruct((b,), jnp.int32,
                                      sharding=s.batch_sharding)}
    t0 = time.perf_counter()
    lowered = step_fn.lower(s.abstract_state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile(
        KEEP_REMAT if full_compile else {**KEEP_REMAT, **FAST_COMPILE})
    t2 = time.perf_counter()
    m = compiled.memory_analysis()
    sizes = dict(s.mesh.shape)
    result = Plan(
        model=config.model_name, resolution=config.image_size, batch=b,
        batch_per_device=b // (sizes['data'] * sizes['fsdp']),
        dtype=config.dtype, remat=remat, mesh=sizes, devices=len(devices),
        num_params=sum(math.prod(x.shape) for x in
                       jax.tree.leaves(s.abstract_state.params)),
        param_bytes=_shard_bytes(s.abstract_state.params),
        opt_state_bytes=_shard_bytes(s.abstract_state.opt_state),
        argument_bytes=m.argument_size_in_bytes,
        output_bytes=m.output_size_in_bytes,
        alias_bytes=m.alias_size_in_bytes, temp_bytes=m.temp_size_in_bytes,
        generated_code_bytes=m.generated_code_size_in_bytes,
        peak_bytes=(m.argument_size_in_bytes + m.output_size_in_bytes
                    - m.alias_size_in_bytes + m.temp_size_in_bytes),
        lower_s=t1 - t0, compile_s=t2 - t1, full_compile=full_compile)
    if measure:
      result.measured_peak_bytes = _measure(s, compiled)
  return result


def _status_kib(field: str) -> int:
  for line in pathlib.Path('/proc/self/status').read_text().splitlines():
    if line.startswith(field + ':'):
      return int(line.split()[1])
  raise ValueError(f'/proc/self/status has no {field} (Linux only)')


def _measure(s, compiled) -> int:
  """Runs `compiled` once on a fresh state and a real batch; returns the
  growth of the process's resident memory, bytes: peak during state
  creation and the step (VmHWM, reset first) minus the resident memory
  before. Everything is compiled before, so compilers' memory is not
  counted."""
  # pylint: disable=g-import-not-at-top
  import ctypes
  import gc
  import jax
  init = s.init_fn.func.lower(*s.init_fn.args).compile()
  host_batch = next(s.train_batches(0))
  gc.collect()
  ctypes.CDLL(None).malloc_trim(0)  # freed compiler memory back to the OS
  before = _status_kib('VmRSS')
  pathlib.Path('/proc/self/clear_refs').write_text('5')  # VmHWM := VmRSS
  state = init(*s.init_fn.args)
  batch = jax.device_put(host_batch, s.batch_sharding)
  out = compiled(state, batch)
  jax.block_until_ready(out)
  peak = _status_kib('VmHWM')
  del out
  return (peak - before) * 1024


def _gib(n: int) -> str:
  return f'{n / GiB:8.3f} GiB  ({n:,} bytes)'


def format_plan(p: Plan) -> str:
  """The human-readable report (see the module docstring)."""
  mesh = ', '.join(f'{a}={n}' for a, n in p.mesh.items())
  lines = [
      f'{p.model} at {p.resolution} px, batch {p.batch} ({p.batch_per_device}'
      f' per device), compute {p.dtype}, remat {p.remat}',
      f'mesh {mesh} on {p.devices} simulated devices; '
      f'{p.num_params:,} parameters',
      'per device:',
      f'  parameters        {_gib(p.param_bytes)}',
      f'  optimizer state   {_gib(p.opt_state_bytes)}',
      f'  XLA arguments     {_gib(p.argument_bytes)}',
      f'  XLA outputs       {_gib(p.output_bytes)}',
      f'  XLA aliased       {_gib(p.alias_bytes)}',
      f'  XLA temporaries   {_gib(p.temp_bytes)}',
      f'  peak              {_gib(p.peak_bytes)}  = arguments + outputs - '
      'aliased + temporaries',
  ]
  if p.measured_peak_bytes is not None:
    ratio = p.peak_bytes / max(p.measured_peak_bytes, 1)
    lines.append(f'  measured (RSS)    {_gib(p.measured_peak_bytes)}  '
                 f'(plan / measured = {ratio:.3f})')
  lines.append(f'lower {p.lower_s:.1f} s, compile {p.compile_s:.1f} s'
               + ('' if p.full_compile else ' (XLA:CPU code optimization '
                  'off; --full_compile for a run\'s compile time)'))
  return '\n'.join(lines)


def parse_args(argv: Sequence[str]):
  parser = argparse.ArgumentParser(
      prog='python -m vit_jax.perf.plan',
      description='Per-device memory and compile time of the training step.')
  parser.add_argument('--model', default='B/16',
                      help='a name of the vit_jax.models registry')
  parser.add_argument('--resolution', type=int, default=224)
  parser.add_argument('--batch', type=int, default=256,
                      help='global batch (config.batch_size)')
  parser.add_argument('--dtype', default='bfloat16',
                      choices=('float32', 'bfloat16'),
                      help='compute dtype (parameters stay float32)')
  parser.add_argument('--remat', default='off',
                      help='on | off (config.model.remat), or a remat policy '
                      'name where the model has config.model.remat_policy')
  parser.add_argument('--mesh', action='append', default=[],
                      help='AXIS=SIZE[,AXIS=SIZE] over data, fsdp, tensor; '
                      'repeatable; default data=DEVICES')
  parser.add_argument('--devices', type=int, default=8,
                      help='simulated devices (the product of the mesh)')
  parser.add_argument('--set', action='append', default=[],
                      metavar='KEY=VALUE', help='any config override, e.g. '
                      'optim.name=adamw or accum_steps=4')
  parser.add_argument('--measure', action='store_true',
                      help='also run the step once and measure peak RSS '
                      '(one device)')
  parser.add_argument('--full_compile', action='store_true',
                      help='compile with XLA:CPU code optimization on (same '
                      'memory figures, slower; the compile time of a run)')
  parser.add_argument('--json', action='store_true',
                      help='print one JSON object instead of the report')
  return parser.parse_args(argv)


def simulated_environ(environ, devices: int) -> dict[str, str]:
  """`environ` with JAX on CPU and exactly `devices` host devices."""
  env = dict(environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith(_DEVICES_FLAG)]
  env['XLA_FLAGS'] = ' '.join(flags + [f'{_DEVICES_FLAG}={devices}'])
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def main(argv: Sequence[str]) -> int:
  try:
    args = parse_args(argv)
    mesh = check_args(args)
    env = simulated_environ(os.environ, args.devices)
    if 'jax' not in sys.modules:
      # The device count is read when jax starts: set the flag before.
      os.environ.update({k: env[k] for k in ('XLA_FLAGS', 'JAX_PLATFORMS')})
    check_model(args.model)
    config = make_config(args, mesh)
    import jax  # pylint: disable=g-import-not-at-top
    devices = jax.devices()
    if len(devices) < args.devices:
      raise ValueError(f'--devices={args.devices}: jax has {len(devices)} '
                       'devices in this process')
    result = plan(config, devices[:args.devices], remat=args.remat,
                  measure=args.measure, full_compile=args.full_compile)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(dataclasses.asdict(result)))
  else:
    print(format_plan(result))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
