"""Smoke tests of the benchmark module, scripts and `inference_time` trainer.

Each runs the tiniest case (mu/16 at 32 px, batch 4, one timed step): these
check that the scripts run and that what they report agrees with a hand
count of the model's FLOPs and with the test's own clock, not the speed
(benchmarks are scripts, not timed tests). Batch 4 everywhere, the batch of
`perf_defaults.py`'s tiny case: the scripts compile the same steps (and
`timm_side_by_side.py` the same init as `perf_defaults.py`), so the session's
compilation cache compiles each once.
"""

import dataclasses
import importlib.util
import json
import sys
import time

import jax
import numpy as np
import optax
import pytest

from tests import golden_inputs
from tests.tiny_configs import random_model_params
from tests.conftest import REPO
from vit_jax import models
from vit_jax.perf import attention
from vit_jax.perf import bench
from vit_jax.perf import hooks
from vit_jax.perf import inference_time

TINY = dict(resolution=32, batch=4, steps=1, warmup=0, peak_tflops=0.1)


def _mu16_flops_by_hand() -> int:
  """Forward FLOPs (2 x multiply-accumulates) of one image through mu/16 at
  32 px with 1000 classes, counted by hand: 2x2 patches of 16 * 16 * 3
  pixels plus a class token = 5 tokens of width 32, MLP width 128, 2
  blocks, the last computing the class token's row alone, then the head."""
  t, d, mlp = 5, 32, 128

  def block(q):  # q query rows attending over t keys / values
    return (q * d * d + 2 * t * d * d   # query; key and value projections
            + 2 * q * t * d             # logits; weighted sum of values
            + q * d * d                 # output projection
            + 2 * q * d * mlp)          # MLP in and out
  return 2 * ((t - 1) * 16 * 16 * 3 * d + block(t) + block(1) + d * 1000)


def _check_result(r: dict, mode: str, wall_s: float) -> None:
  """A `bench.Result` (as a dict) of mu/16 at TINY against the hand count
  of its FLOPs and against `wall_s`, the caller's clock around the run."""
  fwd = _mu16_flops_by_hand()
  assert r['mode'] == mode and r['batch'] == 4 and r['resolution'] == 32
  assert r['forward_flops_per_img'] == fwd
  assert r['flops_per_img'] == (fwd if mode == 'infer' else 3 * fwd)
  # Timed steps and compilation happened inside the caller's interval.
  assert len(r['step_s_all']) == 1 and 0 < r['step_s_all'][0] < wall_s
  assert r['step_s_median'] == pytest.approx(np.median(r['step_s_all']))
  assert 0 < r['compile_s'] < wall_s - r['step_s_all'][0]
  # img/s is batch over the step time: no slower than the wall clock.
  assert r['img_per_s'] * r['step_s_median'] == pytest.approx(4)
  assert r['img_per_s'] > 4 / wall_s
  achieved = r['flops_per_img'] * r['img_per_s']  # FLOP/s
  assert r['tflops'] * 1e12 == pytest.approx(achieved)
  assert r['peak_tflops'] == 0.1
  assert r['mfu'] == pytest.approx(achieved / 0.1e12)
  assert r['device_peak_bytes'] > 0


def _script(name):
  spec = importlib.util.spec_from_file_location(
      name, REPO / 'benchmarks' / f'{name}.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_bench_perf_settings(capsys):
  """--perf reaches the model through the seam and is recorded resolved."""
  r = bench.run('mu/16', mode='infer', log=lambda s: None,
                perf=bench.parse_perf('attention=xla,microbatches=2'), **TINY)
  assert r.perf['attention'] == 'xla' and r.microbatches == 2
  assert r.perf['cpu_gemm'] in ('on', 'off')  # 'auto' resolved
  assert bench.main(['--model=mu/16', '--resolution=32', '--batch=4',
                     '--steps=1', '--warmup=0', '--peak_tflops=0.1',
                     '--perf=attention=fast']) == 1
  err = capsys.readouterr().err.strip()
  assert err == ("error: --perf.attention='fast'; allowed: auto, "
                 + ', '.join(hooks.CHOICES['attention'][1:]))


def test_perf_defaults_script_tiny(tmp_path, capsys):
  """Every combination timed alternating, in two allocator settings (each
  its own process); rows and the printed table agree."""
  mod = _script('perf_defaults')
  out = tmp_path / 'rows.json'
  assert mod.main(['--cases=tiny', '--modes=infer', '--rounds=2',
                   '--pieces=attention', '--allocators=default,mallopt',
                   f'--json={out}']) == 0
  rows = json.loads(out.read_text())
  combos = mod.combinations('vit', ['attention'], 16)
  assert [c['attention'] for c in combos] == list(mod.PIECES['attention'])
  assert len(rows) == 2 * len(combos)
  assert {r['allocator'] for r in rows} == {'default', 'mallopt'}
  for r in rows:
    assert len(r['step_s']) == 2 and r['img_per_s'] > 0
    assert r['img_per_s'] == pytest.approx(
        r['batch'] / np.median(r['step_s']))
  stock = [r for r in rows if r['label'] == 'stock'
           and r['allocator'] == 'default']
  assert stock[0]['ratio_to_stock'] == pytest.approx(1.0)
  table = capsys.readouterr().out
  assert 'attention=xla' in table and '<- fastest' in table


def test_perf_defaults_design():
  mod = _script('perf_defaults')
  full = mod.combinations('vit', None, 64)
  assert len(full) == 2 * 3 * 3 * 2 and full[0] == {
      'cpu_gemm': 'off', 'attention': 'einsum', 'conv': 'xla',
      'microbatches': 1}
  assert {c['conv'] for c in full} == {'xla', 'im2col', 'implicit_gemm'}
  ablation = mod.combinations('hybrid', None, 16)
  assert ablation[0] == {p: v[0] for p, v in mod.PIECES.items()}
  assert mod.LEGACY in ablation and len(ablation) < 30
  assert mod.combinations('vit', [], 16) == [{}]


def test_bench_cli_bad_mode_one_line(capsys):
  assert bench.main(['--model=mu/16', '--mode=infer', '--dtype=float32',
                     '--resolution=32', '--batch=4', '--steps=0']) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith('error:') and 'steps' in err and '\n' not in err


def test_train_step_learns():
  """The benchmarked train step (mu/16, batch 4, the benchmark's AdamW) is
  a real AdamW step: from random parameters the loss goes down, step by
  step."""
  model = models.get_model('mu/16', num_classes=1000)
  x = golden_inputs.random_images(0, 4, 32)
  y = np.array([3, 7, 1, 9], np.int32)
  params = random_model_params(model, 32, seed=1)
  tx = optax.adamw(1e-4, weight_decay=1e-4)  # as `bench.compile_step`
  step = bench.make_train_step(model, tx)
  state = jax.jit(tx.init)(params)
  losses = []
  for _ in range(5):
    params, state, loss = step(params, state, x, y)
    losses.append(float(loss))
  assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_cudnn_padding_is_exact(monkeypatch):
  """The padded+masked attention used for cuDNN equals plain attention.

  Run on CPU with XLA standing in for the cuDNN kernel (same semantics).
  """
  q, k, v = (np.random.default_rng(i).standard_normal(
      (2, 197, 3, 16)).astype(np.float32) for i in range(3))
  orig = jax.nn.dot_product_attention
  ref, ref_one = jax.jit(lambda q, k, v: (orig(q, k, v), orig(q[:, :1], k, v)))(
      q, k, v)
  monkeypatch.setattr(
      jax.nn, 'dot_product_attention',
      lambda *a, implementation=None, **kw: orig(*a, implementation='xla',
                                                 **kw))
  for multiple in (8, 64, 1):  # 1: no padding
    out = jax.jit(attention.cudnn(multiple))(q, k, v)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-5)
  # a single query: no cuDNN call
  one = jax.jit(attention.cudnn(8))(q[:, :1], k, v)
  np.testing.assert_allclose(one, ref_one, atol=1e-5)


@pytest.mark.parametrize('timm_process', ['auto', 'same'])
def test_side_by_side_tiny(tmp_path, capsys, monkeypatch, timm_process):
  """auto on CPU: each row by its own process of the script (here the
  command line it would start, run in this process), timm in a child."""
  mod = _script('timm_side_by_side')
  out = tmp_path / 'rows.jsonl'
  started = []

  def call(cmd):
    assert cmd[:2] == [sys.executable, mod.__file__]
    started.append([a for a in cmd if a.startswith(('--cases', '--modes'))])
    return mod.main(cmd[2:])
  monkeypatch.setattr(mod.subprocess, 'call', call)
  assert mod.main(['--cases=tiny', '--modes=infer,train', '--batch=4',
                   '--rounds=2', '--warmup=0', f'--json={out}',
                   f'--timm_process={timm_process}']
                  + ([] if timm_process == 'auto'
                     else ['--case_process=same'])) == 0
  assert started == ([[f'--cases=tiny', f'--modes={m}'] for m in
                      ('infer', 'train')] if timm_process == 'auto' else [])
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r['mode'] for r in rows] == ['infer', 'train']
  for r in rows:
    assert r['ours_img_s'] > 0 and len(r['ours_step_s']) == 2
    assert len(r['ours_step_faults']) == 2
    assert all(f >= 0 for f in r['ours_step_faults'])
    if mod.timm is not None:
      # On CPU, auto runs timm in a child process.
      assert r['timm_process'] == ('same' if timm_process == 'same'
                                   else 'separate')
      assert len(r['timm_step_s']) == 2 and min(r['timm_step_s']) > 0
      assert len(r['timm_step_faults']) == 2
      assert r['ratio'] == pytest.approx(r['ours_img_s'] / r['timm_img_s'])
  assert 'ratio' in capsys.readouterr().out


@pytest.mark.parametrize('min_seconds,rounds', [(0, 2), (1e6, 50)])
def test_side_by_side_short_steps_get_more_rounds(tmp_path, min_seconds,
                                                 rounds):
  mod = _script('timm_side_by_side')
  out = tmp_path / 'rows.jsonl'
  assert mod.main(['--cases=tiny', '--modes=infer', '--batch=4', '--no_timm',
                   '--rounds=2', '--warmup=1', f'--min_seconds={min_seconds}',
                   f'--json={out}']) == 0
  row = json.loads(out.read_text())
  assert len(row['ours_step_s']) == rounds == min(rounds, mod.MAX_ROUNDS)


def test_scaling_and_peak_scripts(tmp_path, capsys):
  """The scaling table (a `bench.run` training step per row; the row's
  numbers checked) and the matmul peak."""
  rows = tmp_path / 'rows.jsonl'
  t0 = time.perf_counter()
  assert _script('scaling').main(
      ['--models=mu/16', '--resolutions=32', '--batch=4', '--steps=1',
       '--warmup=0', '--peak_tflops=0.1', f'--json={rows}']) == 0
  wall_s = time.perf_counter() - t0
  table = capsys.readouterr().out
  assert '| mu/16 | 32 |' in table and 'failed' not in table
  [row] = [json.loads(l) for l in rows.read_text().splitlines()]
  _check_result(row, 'train', wall_s)
  assert _script('matmul_peak').main(['--n=128', '--steps=1']) == 0
  assert 'GFLOP/s' in capsys.readouterr().out


def test_conv_kernels_script(capsys, monkeypatch):
  """One row per convolution: the root's 7x7/2 and the stages' 3x3/1 and
  3x3/2 (the other five repeat these kinds at other sizes)."""
  mod = _script('conv_kernels')
  kinds = mod.R26_CONVS[:3]
  assert {(k, s) for *_, k, s in kinds} == {(7, 2), (3, 1), (3, 2)}
  monkeypatch.setattr(mod, 'R26_CONVS', kinds)
  assert mod.main(['--batch=1', '--steps=1', '--scale=16']) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if '/' in l
          and '|' in l and 'GFLOP |' not in l]
  assert len(rows) == len(kinds)


def test_inference_time_trainer(tmp_path):
  """The trainer's `bench.run` inference row (numbers checked), as
  returned and as written to the workdir."""
  spec = importlib.util.spec_from_file_location(
      'it_config', REPO / 'configs' / 'inference_time.py')
  cfg_mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cfg_mod)
  config = cfg_mod.get_config('mu/16')
  assert config.trainer == 'inference_time'
  with config.unlocked():
    config.update(dict(image_size=32, batch_size=4, steps=1, warmup=0,
                       peak_tflops=0.1))
  t0 = time.perf_counter()
  results = inference_time.run(config, str(tmp_path))
  wall_s = time.perf_counter() - t0
  saved = json.loads((tmp_path / 'inference_time.json').read_text())
  assert [r['mode'] for r in saved] == ['infer']
  assert saved[0] == json.loads(json.dumps(dataclasses.asdict(results[0])))
  _check_result(saved[0], 'infer', wall_s)
  with config.unlocked():
    config.modes = 'infer,serve'
  with pytest.raises(ValueError, match='serve'):
    inference_time.run(config, str(tmp_path))


@pytest.mark.parametrize('mode', bench.MODES)
def test_profile_step_tiny(tmp_path, capsys, mode):
  mod = _script('profile_step')
  assert mod.main(['--model=mu/16', '--resolution=32', '--batch=4',
                   f'--mode={mode}', '--top=50',
                   f'--trace_dir={tmp_path}']) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith(f'mu/16 32px batch 4 float32 {mode}')
  rows = out[2:]
  assert rows, 'no op rows'
  ms = [float(r.split()[0]) for r in rows]
  assert ms == sorted(ms, reverse=True) and all(m >= 0 for m in ms)
  # The model's matmuls are found, with their operand shapes and a rate.
  dots = [r for r in rows if '| ' in r]
  assert dots and all(r.split()[2] != '-' for r in dots)
  assert any('x f32[32,128]' in r or 'x f32[128,32]' in r for r in dots)


def test_profile_table_parses_a_dot():
  mod = _script('profile_step')
  hlo = '\n'.join([
      'ENTRY %main (a: f32[4,8], b: f32[8,3]) -> f32[4,3] {',
      '  %a = f32[4,8]{1,0} parameter(0)',
      '  %b = f32[8,3]{1,0} parameter(1)',
      '  ROOT %d = f32[4,3]{1,0} dot(%a, %b), lhs_contracting_dims={1}, '
      'rhs_contracting_dims={0}',
      '}'])
  comps, insts = mod.parse_hlo(hlo)
  key, flops = mod.describe('d', comps, insts)
  assert flops == 2 * 4 * 3 * 8
  assert key.startswith('f32[4,3] <- dot x1 | f32[4,8] x f32[8,3]')
