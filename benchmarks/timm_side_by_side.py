"""Our JAX models vs timm's equivalents, same inputs, same run, alternating.

    python benchmarks/timm_side_by_side.py                      # CPU, fp32
    python benchmarks/timm_side_by_side.py --cases=ti16,b16 --modes=infer
    python benchmarks/timm_side_by_side.py --dtype=bfloat16 --torch_compile \
        --cases=b16 --modes=train --batch=128                   # GPU
    python benchmarks/timm_side_by_side.py --cases=tiny --rounds=2  # smoke

For each case and mode both models are built with 1000 classes and compiled /
warmed up, then timed in `--rounds` rounds; each round runs one of our steps,
then one timm step (the order flips every round), each on the same images
[B, H, W, 3] (NCHW copy for torch) and labels. Cases with short steps get
more rounds, so that each side is timed for at least `--min_seconds`
(judged by the faster warm-up step; ViT-Ti/16 inference on the 2-core CPU:
~6 rounds). Printed per case: median
img/s of each and the ratio ours / timm (> 1 means we are faster).

On CPU timm runs in a child process (`--timm_process=separate`, the default
there), driven step by step from here, so the two frameworks alternate but do
not share a malloc heap: in one process, torch's tensors land in the memory
XLA freed after its step, XLA's next step-sized buffer no longer fits, and
the heap grows by ~1 GB with ~300 k page faults (several seconds of system
time on a VM) in whichever step comes next, at random. Both sides run
under the same allocator: `--host_malloc` (default auto: on without a
GPU / TPU) applies `vit_jax.perf.host_malloc`'s glibc settings in this
process and in the child, each before its framework starts its threads
(they spare torch its page faults too); the printed line says which. On
GPU both stay in this process (`same`): JAX preallocates most of the GPU
memory for itself. Our model is built with the computation hooks of
`--perf` (`config.perf` settings, `vit_jax.perf.hooks`; unset: auto).

On CPU each case / mode runs in a fresh process of this script
(`--case_process=separate`, the default there with more than one row): the
allocator settings keep the heap a case grew, so a later case would start on
a bigger heap than it needs (and five cases in one process can outgrow
memory).

Inference: forward in eval mode, no grad. Training: one AdamW step on softmax
cross-entropy (forward, backward, update), both frameworks. fp32 on CPU uses
`--threads` threads in torch (default: all cores, as XLA:CPU does); bf16 runs
JAX with bf16 compute / fp32 params and torch under `torch.autocast(bf16)`,
optionally `torch.compile`d.

timm and torch are test-only dependencies: without them this script prints
SKIP and still times our side. No tensorflow / ml_collections imports.
"""

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from vit_jax.perf import bench  # pylint: disable=g-import-not-at-top
from vit_jax.perf import hooks  # pylint: disable=g-import-not-at-top
from vit_jax.perf import host_malloc  # pylint: disable=g-import-not-at-top

try:
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
except ImportError:  # timm is a test-only dependency
  timm = torch = None


@dataclasses.dataclass(frozen=True)
class Case:
  """Our registry name, timm's name (or a constructor), resolution."""
  name: str
  ours: str
  timm_name: str
  resolution: int


CASES = {
    'tiny': Case('tiny', 'mu/16', 'tiny', 32),
    'ti16': Case('ti16', 'Ti/16', 'vit_tiny_patch16_224', 224),
    's16': Case('s16', 'S/16', 'vit_small_patch16_224', 224),
    'b16': Case('b16', 'B/16', 'vit_base_patch16_224', 224),
    'b16_384': Case('b16_384', 'B/16', 'vit_base_patch16_384', 384),
    'r26_s32': Case('r26_s32', 'R26+S/32', 'vit_small_r26_s32_224', 224),
    'mixer_b16': Case('mixer_b16', 'Mixer-B_16', 'mixer_b16_224', 224),
}
DEFAULT_CASES = 'ti16,s16,b16,b16_384,r26_s32,mixer_b16'
# Page faults in one timed step above which the printed row says so: a step
# that grows the heap (seconds of system time on a VM) takes ~1e3 (2 MiB
# pages) to ~3e5 (4 KiB pages); a steady one ~0.
FAULTS_NOTED = 100
MAX_ROUNDS = 50


def _timm_model(case: Case, resolution: int):
  if case.timm_name == 'tiny':  # the same shape as our mu/16
    return timm.models.vision_transformer.VisionTransformer(
        img_size=resolution, patch_size=16, embed_dim=32, depth=2,
        num_heads=2, mlp_ratio=4, num_classes=1000)
  kw = {} if resolution == case.resolution else {'img_size': resolution}
  return timm.create_model(case.timm_name, pretrained=False, num_classes=1000,
                           **kw)


def jax_step(case: Case, mode: str, dtype: str, resolution: int,
             images: np.ndarray, labels: np.ndarray,
             remat: bool, perf=None) -> tuple[Callable[[], Any], int]:
  """(no-argument callable running one compiled step of our model, number of
  micro-batches it splits the batch into: `vit_jax.perf.microbatch`).

  `perf`: `config.perf` settings for the model's hooks (missing: auto).
  """
  perf = dict(perf or {})
  overrides = {'dtype': bench.DTYPES[dtype]}
  if remat:
    overrides['remat'] = True
  model = bench.build_model(case.ours, perf, num_classes=1000, **overrides)
  x = jnp.asarray(images)
  y = jnp.asarray(labels)
  params = jax.jit(lambda k: model.init(k, x[:1])['params'])(
      jax.random.key(0))
  parts = hooks.microbatches(perf, mode, x.shape[0], resolution=resolution)
  return bench.compile_step(model, mode, params, x, y, parts)[1:]


def torch_step(case: Case, mode: str, dtype: str, resolution: int,
               images: np.ndarray, labels: np.ndarray, device: str,
               compile_model: bool) -> Callable[[], Any]:
  """A no-argument callable running one timm step (synchronized)."""
  model = _timm_model(case, resolution).to(device)
  x = torch.from_numpy(np.ascontiguousarray(
      images.transpose(0, 3, 1, 2))).to(device)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)
  autocast = torch.autocast(device_type=device.split(':')[0],
                            dtype=torch.bfloat16,
                            enabled=dtype == 'bfloat16')
  sync = (torch.cuda.synchronize if device.startswith('cuda')
          else lambda: None)
  fwd = torch.compile(model) if compile_model else model
  if mode == 'infer':
    model.eval()

    def call():
      with torch.no_grad(), autocast:
        out = fwd(x)
      sync()
      return out
    return call
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4,
                          **({'fused': True} if device.startswith('cuda')
                             else {}))
  loss_fn = torch.nn.CrossEntropyLoss()

  def call():
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_fn(fwd(x).float(), y)
    loss.backward()
    opt.step()
    sync()
    return loss
  return call


def _faults() -> int:
  """Minor page faults of this process so far (a step that grows the heap
  takes ~350 k on 4 KiB pages; steady steps ~0: `vit_jax.perf.host_malloc`)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(fn: Callable[[], Any], faults: Optional[list] = None) -> float:
  """Seconds of one call of `fn`; appends its page faults to `faults`."""
  f0, t0 = _faults(), time.perf_counter()
  jax.block_until_ready(fn())
  t = time.perf_counter() - t0
  if faults is not None:
    faults.append(_faults() - f0)
  return t


def _inputs(batch: int, res: int) -> tuple[np.ndarray, np.ndarray]:
  """The images [B, res, res, 3] in [-1, 1] and labels [B] of every case
  (seeded: the timm child process draws the same)."""
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch, res, res, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, (batch,)).astype(np.int32)
  return images, labels


class TimmProcess:
  """timm's steps in a child process (`--_timm_worker`), one per call.

  Protocol: JSON lines on the child's stdin / a duplicate of its stdout (its
  own prints go to stderr): {"case", "mode", "dtype", "resolution", "batch",
  "device", "compile"} builds a step and answers {"ready": true}; {"step":
  true} runs one and answers {"seconds": s, "faults": minor page faults}.
  """

  def __init__(self, threads: int, host_malloc_mode: str = 'off'):
    self._proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--_timm_worker',
         f'--threads={threads}', f'--host_malloc={host_malloc_mode}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def _ask(self, request: dict) -> dict:
    self._proc.stdin.write(json.dumps(request) + '\n')
    self._proc.stdin.flush()
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f'the timm process died (exit {self._proc.wait()}; '
                         'its stderr is above)')
    return json.loads(line)

  def build(self, case: Case, mode: str, args, res: int,
            faults: list) -> Callable[[], float]:
    """Builds timm's step for this case in the child; returns a callable
    that runs one step there and returns its seconds (its page faults are
    appended to `faults`)."""
    self.host_malloc = self._ask(dict(
        case=case.name, mode=mode, dtype=args.dtype, resolution=res,
        batch=args.batch, device=args.torch_device,
        compile=args.torch_compile))['host_malloc']

    def step():
      answer = self._ask({'step': True})
      faults.append(answer['faults'])
      return answer['seconds']
    return step

  def close(self):
    self._proc.stdin.close()
    self._proc.wait()


def _timm_worker(threads: int) -> int:
  """The child of `TimmProcess`: builds and times timm steps on request."""
  answers = os.fdopen(os.dup(1), 'w')
  os.dup2(2, 1)  # anything printed goes to stderr, not into the protocol
  torch.set_num_threads(threads)
  step = None
  for line in sys.stdin:
    request = json.loads(line)
    if 'step' in request:
      faults = []
      answer = {'seconds': _timed(step, faults), 'faults': faults[0]}
    else:
      images, labels = _inputs(request['batch'], request['resolution'])
      step = torch_step(CASES[request['case']], request['mode'],
                        request['dtype'], request['resolution'], images,
                        labels, request['device'], request['compile'])
      answer = {'ready': True, 'host_malloc': host_malloc.active()}
    answers.write(json.dumps(answer) + '\n')
    answers.flush()
  return 0


def run_case(case: Case, mode: str, args, timm_process=None) -> dict:
  """Times one case/mode, alternating; returns a row of raw numbers.

  timm's step runs in `timm_process` (a `TimmProcess`) if given, else here.
  """
  res = args.resolution or case.resolution
  images, labels = _inputs(args.batch, res)
  ours, parts = jax_step(case, mode, args.dtype, res, images, labels,
                         args.remat, args.perf)
  f_ours, f_timm = [], []  # page faults per step, warm-up included
  ours_timed = lambda: _timed(ours, f_ours)  # each: one step, its seconds
  theirs_timed = None
  if timm_process is not None:
    theirs_timed = timm_process.build(case, mode, args, res, f_timm)
  elif timm is not None and not args.no_timm:
    theirs = torch_step(case, mode, args.dtype, res, images, labels,
                        args.torch_device, args.torch_compile)
    theirs_timed = lambda: _timed(theirs, f_timm)
  warm = []
  for _ in range(args.warmup):
    warm.append(ours_timed())
    if theirs_timed:
      warm.append(theirs_timed())
  # Short steps get more rounds (at most MAX_ROUNDS): each side timed for
  # >= --min_seconds.
  rounds = args.rounds
  if warm and args.min_seconds > 0:
    rounds = max(rounds, min(MAX_ROUNDS, math.ceil(
        args.min_seconds / max(min(warm), 1e-9))))
  t_ours, t_timm = [], []
  for r in range(rounds):
    order = [(ours_timed, t_ours), (theirs_timed, t_timm)]
    if r % 2:
      order.reverse()
    for timed, acc in order:
      if timed is not None:
        acc.append(timed())
  ips_ours = args.batch / statistics.median(t_ours)
  ips_timm = args.batch / statistics.median(t_timm) if t_timm else None
  return dict(case=case.name, ours=case.ours, timm=case.timm_name,
              resolution=res, batch=args.batch, mode=mode, dtype=args.dtype,
              microbatches=parts,
              ours_img_s=ips_ours, timm_img_s=ips_timm,
              ratio=ips_ours / ips_timm if ips_timm else None,
              ours_step_s=t_ours, timm_step_s=t_timm,
              ours_step_faults=f_ours[args.warmup:],
              timm_step_faults=f_timm[args.warmup:],
              timm_process=('separate' if timm_process else
                            'same' if theirs_timed else None),
              perf=hooks.resolve(args.perf, jax.default_backend(),
                                 jax.device_count()),
              ours_host_malloc=host_malloc.active(),
              timm_host_malloc=(timm_process.host_malloc if timm_process
                                else host_malloc.active()),
              load_avg=os.getloadavg()[0])


def _early_flag(argv, flag: str, default: str) -> str:
  """The value of `--flag=VALUE` in argv, read before anything else runs."""
  for a in argv:
    if a.startswith(flag + '='):
      return a.split('=', 1)[1]
  return default


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--cases', default=DEFAULT_CASES,
                 help=f'comma-separated, from: {", ".join(CASES)}')
  p.add_argument('--modes', default='infer,train')
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--resolution', type=int, default=0,
                 help='override every case\'s resolution (0: the case\'s)')
  p.add_argument('--dtype', default='float32', choices=list(bench.DTYPES))
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--min_seconds', type=float, default=5.0,
                 help='more rounds than --rounds where a step is short, so '
                 'that each side is timed for at least this long (judged by '
                 'the faster warm-up step; 0: exactly --rounds)')
  p.add_argument('--threads', type=int, default=os.cpu_count())
  p.add_argument('--torch_device', default=None,
                 help='default: cuda if JAX runs on a GPU, else cpu')
  p.add_argument('--torch_compile', action='store_true')
  p.add_argument('--remat', action='store_true')
  p.add_argument('--attention_impl', default=None, choices=['xla', 'cudnn'])
  p.add_argument('--parallel_microbatches', type=int, default=None,
                 help='our step\'s independent micro-batches (0: automatic, '
                 'see vit_jax.perf.microbatch)')
  p.add_argument('--perf', default='',
                 help='config.perf settings of our side, KEY=VALUE,... '
                 '(vit_jax.perf.hooks; unset: auto)')
  p.add_argument('--host_malloc', default='auto',
                 choices=list(host_malloc.MODES),
                 help='glibc allocator settings of vit_jax.perf.host_malloc '
                 'for both sides (auto: on without a GPU / TPU)')
  p.add_argument('--no_timm', action='store_true')
  p.add_argument('--timm_process', default='auto',
                 choices=['auto', 'separate', 'same'],
                 help='timm in a child process (separate) or in this one '
                 '(same); auto: separate on CPU, same on GPU')
  p.add_argument('--case_process', default='auto',
                 choices=['auto', 'separate', 'same'],
                 help='each case / mode in a fresh process of this script '
                 '(separate) or all in this one (same); auto: separate on '
                 'CPU with more than one row (the allocator settings keep '
                 'the heap a case grew, and the next case starts on it)')
  p.add_argument('--_timm_worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--_no_header', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--json', default=None, help='append rows here')
  args = p.parse_args(argv)
  for c in args.cases.split(','):
    if c not in CASES:
      p.error(f'--cases: unknown case {c!r}; allowed: {", ".join(CASES)}')
  for m in args.modes.split(','):
    if m not in bench.MODES:
      p.error(f'--modes: unknown mode {m!r}; allowed: infer, train')
  if args._timm_worker:  # pylint: disable=protected-access
    return args
  try:
    args.perf = bench.parse_perf(args.perf)
  except ValueError as e:
    p.error(str(e))
  if args.attention_impl:
    args.perf['attention'] = {'xla': 'einsum'}.get(args.attention_impl,
                                                   args.attention_impl)
  if args.parallel_microbatches is not None:
    args.perf['microbatches'] = args.parallel_microbatches
  if args.torch_device is None:
    args.torch_device = ('cuda' if jax.devices()[0].platform == 'gpu'
                         else 'cpu')
  if args.timm_process == 'auto':
    args.timm_process = 'separate' if args.torch_device == 'cpu' else 'same'
  rows = len(args.cases.split(',')) * len(args.modes.split(','))
  if args.case_process == 'auto':
    args.case_process = ('separate' if args.torch_device == 'cpu' and rows > 1
                         else 'same')
  args.argv = list(argv)
  return args


def main(argv: Optional[list[str]] = None, set_allocator: bool = False) -> int:
  """The command line; `set_allocator`: apply `--host_malloc` here first (a
  fresh process, before XLA starts its threads; the timm child follows)."""
  if set_allocator:
    host_malloc.apply(_early_flag(sys.argv[1:] if argv is None else argv,
                                  '--host_malloc', 'auto'))
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args._timm_worker:  # pylint: disable=protected-access
    host_malloc.apply(args.host_malloc)  # before torch starts its threads
    return _timm_worker(args.threads)
  if args.case_process == 'separate':
    return _run_each_in_own_process(args)
  child = None
  if timm is None:
    print('SKIP timm: timm/torch not installed; timing our side only')
  else:
    torch.set_num_threads(args.threads)
    if args.timm_process == 'separate' and not args.no_timm:
      child = TimmProcess(args.threads,
                          'on' if host_malloc.active() else 'off')
  if not args._no_header:  # pylint: disable=protected-access
    print(f'jax {jax.__version__} on {bench.device_name()}; '
          + (f'torch {torch.__version__} on {args.torch_device} '
             f'({torch.get_num_threads()} threads, '
             f'{args.timm_process} process), timm {timm.__version__}'
             if timm else 'no timm')
          + f'; {host_malloc.describe()} (both sides)', flush=True)
  try:
    return _run_all(args, child)
  finally:
    if child:
      child.close()


def _run_each_in_own_process(args) -> int:
  """Each case / mode by a fresh process of this script (its own heap, its
  own timm child), one after the other; their rows are printed as they come
  (and appended to `--json`). Returns the first non-zero exit status."""
  own = ('--cases', '--modes', '--case_process')  # set per child below
  keep, skip_value = [], False
  for a in args.argv:
    flag = a.split('=', 1)[0]
    if skip_value or flag == '--_no_header':
      skip_value = False
    elif flag in own:
      skip_value = '=' not in a  # '--cases ti16': drop the value too
    else:
      keep.append(a)
  status = 0
  first = True
  for c in args.cases.split(','):
    for m in args.modes.split(','):
      cmd = [sys.executable, os.path.abspath(__file__), *keep,
             f'--cases={c}', f'--modes={m}', '--case_process=same']
      if not first:
        cmd.append('--_no_header')
      first = False
      rc = subprocess.call(cmd)
      if rc:
        print(f'{c:10s} {m:5s} FAILED: its process exited {rc}'
              + (' (killed: out of memory?)' if rc < 0 else ''), flush=True)
        status = status or rc
  return status


def _run_all(args, child: Optional[TimmProcess]) -> int:
  """Runs and prints every case / mode; timm's steps in `child` if given."""
  rows = []
  for c in args.cases.split(','):
    for m in args.modes.split(','):
      row = run_case(CASES[c], m, args, child)
      rows.append(row)
      timm_s = (f'{row["timm_img_s"]:8.2f}' if row['timm_img_s']
                else '     n/a')
      ratio = f'{row["ratio"]:.2f}' if row['ratio'] else 'n/a'
      faults = max(row['ours_step_faults'] + row['timm_step_faults'])
      print(f'{c:10s} {m:5s} {row["resolution"]}px b{args.batch} '
            f'{args.dtype} k{row["microbatches"]}: ours '
            f'{row["ours_img_s"]:8.2f} img/s  timm '
            f'{timm_s} img/s  ratio {ratio}  (load {row["load_avg"]:.1f}'
            + (f'; a timed step took {faults} page faults'
               if faults > FAULTS_NOTED else '') + ')', flush=True)
      if args.json:
        with open(args.json, 'a') as f:
          f.write(json.dumps(row) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main(set_allocator=True))
