"""The memory planner (`python -m vit_jax.perf.plan`): its peak against the
resident memory a real step takes, its per-device parameter bytes against
timm's parameter count and against XLA's own argument sizes, sharding and
remat effects, and its one-line errors."""

import json
import math
import subprocess
import sys

import jax
import pytest

from tests.conftest import REPO
from vit_jax.perf import plan as plan_lib


def _cli(*args, timeout=600):
  return subprocess.run([sys.executable, '-m', 'vit_jax.perf.plan', *args],
                        cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _plan(*argv):
  """plan() in this process (conftest's 8 CPU devices)."""
  args = plan_lib.parse_args(list(argv))
  mesh = plan_lib.check_args(args)
  config = plan_lib.make_config(args, mesh)
  return plan_lib.plan(config, jax.devices()[:args.devices], remat=args.remat)


@pytest.mark.parametrize('extra', [
    ('--batch=8', '--remat=off', '--set=model.num_layers=4'),
    # Remat: the blocks' inputs only; the barriers XLA:CPU keeps for the
    # planner (plan.KEEP_REMAT) must hold in the program that runs.
    ('--batch=32', '--remat=on', '--set=perf.microbatches=1',
     '--set=model.num_layers=4'),
], ids=['remat_off', 'remat_on'])
def test_planned_peak_within_25_percent_of_a_real_steps_rss(extra):
  """ViT-Ti/16 (4 of its 12 blocks), 224 px, one CPU device: the step is
  compiled from shapes, then run once; the process's resident memory grows
  by the measured peak (VmHWM after a reset, minus VmRSS before the state is
  created)."""
  proc = _cli('--model=Ti/16', '--resolution=224', '--devices=1',
              '--dtype=float32', *extra, '--measure', '--json')
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout)
  measured, planned = r['measured_peak_bytes'], r['peak_bytes']
  assert measured > r['param_bytes'] + r['opt_state_bytes']
  assert abs(planned - measured) <= 0.25 * measured, (planned, measured)


def test_parameter_bytes_match_timm_and_xla_arguments():
  timm = pytest.importorskip('timm')
  p = _plan('--model=Ti/16', '--resolution=32', '--batch=16', '--devices=8',
            '--mesh=data=8', '--dtype=float32', '--set=model.num_layers=3')
  # timm's ViT-Ti/16 (3 blocks) with the synthetic dataset's 10 classes.
  ref = timm.create_model('vit_tiny_patch16_224', pretrained=False,
                          num_classes=10, img_size=32, depth=3)
  n = sum(t.numel() for t in ref.parameters())
  assert p.num_params == n
  assert p.param_bytes == 4 * n                 # float32, replicated
  assert p.opt_state_bytes == 2 * n + 4          # bfloat16 momentum + count
  # XLA's arguments: state, step (int32), rng (2 x uint32) and the batch
  # shard (2 images of 32 x 32 x 3 float32, 2 int32 labels).
  batch = 2 * 32 * 32 * 3 * 4 + 2 * 4
  assert p.argument_bytes == p.param_bytes + p.opt_state_bytes + 4 + 8 + batch
  assert p.alias_bytes >= p.param_bytes + p.opt_state_bytes  # donated state
  assert p.peak_bytes == (p.argument_bytes + p.output_bytes - p.alias_bytes
                          + p.temp_bytes)


@pytest.mark.parametrize('model,published', [('g/14', 1011e6),
                                             ('G/14', 1843e6)])
def test_giant_models_compile_abstractly_under_fsdp_on_8_devices(
    model, published):
  """Zhai et al. 2022's ViT-g/14 and ViT-G/14: the real train step, scanned
  with remat, lowered and compiled for an 8-way FSDP mesh on abstract
  arrays (nothing allocated); each device holds an eighth of the float32
  parameters (the paper's parameter counts, Table 2, to 0.1 %)."""
  p = _plan(f'--model={model}', '--resolution=224', '--batch=256',
            '--devices=8', '--mesh=fsdp=8', '--dtype=float32',
            '--remat=nothing_saveable', '--set=model.scan_layers=True')
  assert abs(p.num_params - published) < 1e-3 * published, p.num_params
  assert p.param_bytes == pytest.approx(4 * p.num_params / 8, rel=1e-3)
  assert 0 < p.temp_bytes and p.peak_bytes < 16 * 2**30


def test_fsdp_shards_the_state_and_remat_shrinks_temporaries():
  common = ('--model=Ti/16', '--resolution=224', '--batch=32', '--devices=8',
            '--dtype=float32', '--set=model.num_layers=3')
  dp = _plan(*common, '--mesh=data=8')
  fsdp = _plan(*common, '--mesh=fsdp=8')
  remat = _plan(*common, '--mesh=data=8', '--remat=on')
  # Every leaf of >= 4096 elements is split 8 ways; the rest (biases, norm
  # scales) is replicated: under 2 % of Ti/16's parameters.
  assert dp.param_bytes / 8 <= fsdp.param_bytes <= dp.param_bytes / 8 * 1.15
  assert fsdp.opt_state_bytes <= dp.opt_state_bytes / 8 * 1.15
  assert remat.param_bytes == dp.param_bytes
  assert remat.temp_bytes < 0.7 * dp.temp_bytes, (remat.temp_bytes,
                                                  dp.temp_bytes)


@pytest.mark.parametrize('args, message', [
    (['--mesh=data=4', '--devices=8'],
     'error: --mesh data=4,fsdp=1,tensor=1 needs 4 devices, --devices=8'),
    (['--mesh=data=2,fsdp=4', '--devices=8', '--batch=12'],
     'error: --batch=12 is not divisible by the 8 devices of the batch axes '
     '(data x fsdp = 2 x 4)'),
    (['--mesh=pipe=8'],
     'error: --mesh=pipe=8: expected AXIS=SIZE with AXIS in data, fsdp, '
     'tensor and SIZE a positive integer'),
    (['--measure', '--devices=8'],
     'error: --measure runs the step on one device, got --devices=8'),
    (['--model=Q/16', '--devices=1', '--batch=8'],
     "error: --model=Q/16: unknown model name 'Q/16'; examples of valid "
     'names: '),
])
def test_one_line_errors(args, message):
  proc = _cli(*args, timeout=120)
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_parse_mesh():
  assert plan_lib.parse_mesh([], 8) == {'data': 8, 'fsdp': 1, 'tensor': 1}
  assert plan_lib.parse_mesh(['data=2', 'fsdp=4'], 8) == {
      'data': 2, 'fsdp': 4, 'tensor': 1}
  assert math.prod(plan_lib.parse_mesh(['fsdp=64'], 64).values()) == 64
