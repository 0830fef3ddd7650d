"""Tests of the entry point: --help lists the presets, bad command lines give
one-line errors, the train -> evaluate dispatch works end to end, and a run's
output: no repeated library log lines, an ETA without compile time, a rerun
of a finished run that says so, and a last line naming the outputs."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import pytest

from tests.conftest import COMPILE_FLAGS

from configs import common
from configs import cpu
from vit_jax import config_lib
from vit_jax import main
from vit_jax.training import metrics

REPO = pathlib.Path(__file__).resolve().parent.parent
# Compile time dominates these tiny models on CPU (conftest fixture).
pytestmark = pytest.mark.usefixtures('fast_compile')


def run_main(*args, devices=8):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'{COMPILE_FLAGS} '
             f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run([sys.executable, '-m', 'vit_jax.main', *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


# `python -m vit_jax.main ARGS` for many ARGS in one subprocess: it imports
# the entry point's modules once, then each ARGS runs `app.run(main.main,
# flags_parser=main.parse_flags)` (what `__main__` runs) in a forked child
# of its own, with its own stdout/stderr files and exit status; no child
# initializes JAX before the fork.
_MANY = """
import json, os, sys
import jax, flax.linen, ml_collections, absl.app
from vit_jax import config_lib, main, models
from vit_jax.training import train
out_dir, cases = sys.argv[1], json.loads(sys.argv[2])
codes = []
for i, args in enumerate(cases):
  sys.stdout.flush(); sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    for fd, name in ((1, 'out'), (2, 'err')):
      f = os.open(f'{out_dir}/{i}.{name}', os.O_WRONLY | os.O_CREAT, 0o644)
      os.dup2(f, fd)
    sys.argv = ['vit_jax.main', *args]
    try:
      absl.app.run(main.main, flags_parser=main.parse_flags)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)
  codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


def run_main_many(cases, out_dir, devices=8):
  """[CompletedProcess] of `python -m vit_jax.main *args` for each args of
  `cases` (see _MANY)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'{COMPILE_FLAGS} '
             f'--xla_force_host_platform_device_count={devices}')
  proc = subprocess.run(
      [sys.executable, '-c', _MANY, str(out_dir), json.dumps(cases)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  codes = json.loads(proc.stdout.splitlines()[-1])
  return [subprocess.CompletedProcess(
      args, code, (out_dir / f'{i}.out').read_text(),
      (out_dir / f'{i}.err').read_text())
          for i, (args, code) in enumerate(zip(cases, codes))]


BAD_COMMAND_LINES = [
    (['--config=configs/vit.py:mu16,synthetic', '--config.bogus=1'],
     "unknown config key 'config.bogus': config has no 'bogus'; allowed: "
     'accum_steps, '),
    (['--config=configs/vit.py:mu16,synthetic', '--config.optim.lrr=1'],
     "config.optim has no 'lrr'; allowed: b1, b2, base_lr"),
    (['--config=configs/vit.py:mu16,cifar11'],
     "'cifar11' is neither a model (mu4, mu16"),
    (['--config=configs/vit.py:mu16,synthetic,res=32',
      '--config.batch_size=20'],
     'config.batch_size=20 (per micro-batch 20) is not divisible by the 8 '
     'devices'),
    (['--config=configs/cpu.py:mnist'],
     'configs/cpu.py:mnist: unknown experiment; allowed: digits, cifar10_ft, '
     'cifar10_scratch32, cifar10_ft64'),
    (['--config=configs/vit.py:mu16,synthetic', '--config.model_name=B/17'],
     "config.model_name='B/17': patch size 17 is none of the released (8, "
     '14, 16, 32) or preset (4) sizes; set --config.allow_custom_model=True'),
    (['--config=configs/vit.py:mu16,synthetic', '--config.model_name=b16'],
     "config.model_name: unknown model name 'b16'; examples of valid names: "
     'ViT-Ti_16'),
    (['--config=configs/vits.py:b16,cifar10'],
     'no such config file ({REPO}/configs/vits.py); available: '
     'configs/cpu.py, configs/inference_time.py, '
     'configs/mixer.py, configs/pretrain.py, configs/vit.py'),
    (['--config=configs/vit.py:mu16,synthetic', '--num_processes=2'],
     '--num_processes needs --distributed'),
]


@pytest.fixture(scope='module')
def bad_command_lines(tmp_path_factory):
  """(workdir, CompletedProcess) of each of BAD_COMMAND_LINES."""
  tmp = tmp_path_factory.mktemp('bad_command_lines')
  workdirs = [tmp / f'w{i}' for i in range(len(BAD_COMMAND_LINES))]
  for w in workdirs:
    w.mkdir()
  cases = [[*args, f'--workdir={w}']
           for (args, _), w in zip(BAD_COMMAND_LINES, workdirs)]
  return list(zip(workdirs, run_main_many(cases, tmp)))


@pytest.mark.parametrize('case', range(len(BAD_COMMAND_LINES)),
                         ids=[m[:40] for _, m in BAD_COMMAND_LINES])
def test_bad_command_lines_fail_with_one_line(case, bad_command_lines):
  workdir, proc = bad_command_lines[case]
  match = BAD_COMMAND_LINES[case][1]
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert match.format(REPO=REPO) in lines[0]
  assert 'Traceback' not in proc.stderr
  assert not os.listdir(workdir)  # refused before any work


def test_help_lists_presets_syntax_and_flags():
  proc = run_main('--help')
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = proc.stdout
  assert text.startswith('usage: python -m vit_jax.main --config=FILE[:ARG]')
  assert 'MODEL,DATASET[,res=N,steps=N,batch=N,lr=X]' in text
  flat = ' '.join(text.split())  # help lines are wrapped
  for key, (name, _) in common.MODELS.items():
    assert f'{key} ({name})' in flat
  for key, preset in common.DATASETS.items():
    assert f'{key} ({preset["data"]["dataset"]}, ' in flat
  for short, key in config_lib.SHORTHANDS.items():
    assert f'{short}=... sets config.{key}' in flat
  assert 'EXPERIMENT of configs/cpu.py: ' + ', '.join(cpu.EXPERIMENTS) in flat
  for f in ('vit', 'mixer', 'pretrain', 'cpu', 'inference_time'):
    assert f'configs/{f}.py:' in text
  for flag in ('--config', '--workdir', '--distributed',
               '--coordinator_address', '--num_processes', '--process_id',
               '--verbosity'):
    assert re.search(rf'^  {flag}\b.*: \S', text, re.M), flag
  assert f'then in {REPO / "configs"}' in flat


def test_train_then_evaluate(tmp_path):
  from configs import vit as vit_config  # pylint: disable=g-import-not-at-top
  config = vit_config.get_config('mu16,synthetic,res=32')
  config.batch_size, config.eval_batch_size = 16, 40
  config.total_steps, config.warmup_steps = 8, 2
  config.checkpoint_every = 4
  config.mesh.data, config.mesh.fsdp = 4, 2
  trained = main.run(config, str(tmp_path))
  config.trainer = 'evaluate'
  evaluated = main.run(config, str(tmp_path))
  assert evaluated['count'] == 200
  assert abs(evaluated['top1'] - trained['eval']['top1']) < 1e-6
  assert abs(evaluated['loss'] - trained['eval']['loss']) < 1e-5
  assert jax.device_count() == 8


# --------------------------------------------------------------------------
# Failures of whole runs end with one `error:` line and exit status 1.

SMALL = ['--config=configs/vit.py:mu16,synthetic,res=32',
         '--config.batch_size=16', '--config.eval_batch_size=40',
         '--config.warmup_steps=1', '--config.eval_every=0',
         '--config.log_every=1']


def one_error_line(proc) -> str:
  assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert 'File "' not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert proc.stderr.rstrip().endswith(lines[0])  # the last word
  return lines[0]


def _env(devices=1):
  return dict(os.environ, JAX_PLATFORMS='cpu',
              JAX_DISABLE_MOST_OPTIMIZATIONS='1',
              XLA_FLAGS=f'{COMPILE_FLAGS} '
             f'--xla_force_host_platform_device_count={devices}')


def test_second_run_on_a_workdir_is_refused_naming_the_owner(tmp_path):
  """Two runs on one workdir: the second refuses at once; the first, asked
  to stop (SIGTERM), saves its step and exits 0."""
  workdir = tmp_path / 'w'
  log = tmp_path / 'first.log'
  with open(log, 'w') as out:
    first = subprocess.Popen(
        [sys.executable, '-m', 'vit_jax.main', *SMALL, f'--workdir={workdir}',
         '--config.total_steps=100000', '--config.checkpoint_every=0'],
        cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)
  lock = workdir / 'lock'
  try:
    deadline = time.time() + 240
    while 'step 2/100000' not in log.read_text():  # the first run trains
      assert first.poll() is None and time.time() < deadline, log.read_text()
      time.sleep(0.2)
    owner = json.loads(lock.read_text())
    assert owner['pid'] == first.pid
    second = subprocess.run(
        [sys.executable, '-m', 'vit_jax.main', *SMALL,
         f'--workdir={workdir}', '--config.total_steps=4'],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    line = one_error_line(second)
    assert line == (
        f'error: workdir {workdir} is in use by another run (host '
        f'{owner["host"]} pid {first.pid} started {owner["started"]}; lock '
        f'file {workdir}/lock); wait for it to finish or use another '
        '--workdir')
    assert json.loads(lock.read_text()) == owner  # untouched
  finally:
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=240)
  out = log.read_text()
  assert first.returncode == 0, out[-3000:]
  stopped = [l for l in out.splitlines() if l.startswith('stopping at step')]
  assert len(stopped) == 1, out[-2000:]
  step = int(stopped[0].split()[3].rstrip(':'))
  assert os.listdir(workdir / 'checkpoints') == [str(step)]
  assert not (workdir / 'lock').exists()
  assert json.loads((workdir / 'config.json').read_text())[
      'total_steps'] == 100000


def test_workdir_that_cannot_be_created(tmp_path):
  (tmp_path / 'f').write_text('x')
  workdirs = [tmp_path / 'f' / 'w', pathlib.Path('/proc/self/vit_jax_workdir')]
  procs = run_main_many([[*SMALL, f'--workdir={w}', '--config.total_steps=2']
                         for w in workdirs], tmp_path, devices=1)
  for workdir, proc in zip(workdirs, procs):
    line = one_error_line(proc)
    assert line.startswith(f'error: cannot create workdir {workdir}: '), line


_FULL_DISK = '''
import errno, os, sys
from etils import epath
cls = type(epath.Path('/'))
write_text = cls.write_text
def full(self, *a, **k):
  if '/checkpoints/4.orbax-checkpoint-tmp' in str(self):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
  return write_text(self, *a, **k)
cls.write_text = full
from absl import app
from vit_jax import main
sys.argv[0] = 'vit_jax.main'
app.run(main.main, flags_parser=main.parse_flags)
'''


def test_full_disk_during_an_async_save_is_one_line(tmp_path):
  """Orbax's background save of step 4 hits ENOSPC (injected into its
  metadata write); steps 2 (and 3) stay intact."""
  proc = subprocess.run(
      [sys.executable, '-c', _FULL_DISK, *SMALL, f'--workdir={tmp_path}',
       '--config.total_steps=6', '--config.checkpoint_every=1',
       '--config.keep_checkpoints=2'],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  line = one_error_line(proc)
  assert line.startswith(f'error: saving checkpoint step 4 in {tmp_path}/'
                         'checkpoints failed: no space left on device'), line
  assert line.endswith('earlier checkpoints are intact (steps 2, 3): rerun '
                       'the same command to resume from step 3'), line
  steps = sorted(d for d in os.listdir(tmp_path / 'checkpoints')
                 if d.isdigit())
  assert steps == ['2', '3']


# --------------------------------------------------------------------------
# A run's output, and a rerun of the finished run.


def test_eta_excludes_compilation(monkeypatch):
  """Step 1 compiles for 30 s, steps 2..10 take 0.1 s each: the ETA at step
  10 is 990 x 0.1 s (the first ETA was 7 min for a 56 s run when the
  compile time was counted)."""
  clock = [0.0]
  monkeypatch.setattr(metrics.time, 'perf_counter', lambda: clock[0])
  progress = metrics.Progress(total_steps=1000, batch_size=64, start_step=0)
  clock[0] = 30.0
  assert progress.update(1) is None  # not restarted yet: no figure
  progress.restart(1)
  assert progress.compile_sec == 30.0
  clock[0] = 30.0 + 9 * 0.1
  p = progress.update(10)
  assert p['eta_sec'] == pytest.approx(990 * 0.1)
  assert p['img_per_sec'] == pytest.approx(640)
  clock[0] += 5.0  # an evaluation: not counted
  assert progress.update(10) is None
  clock[0] += 10 * 0.2
  assert progress.update(20)['eta_sec'] == pytest.approx(980 * 0.2)


# absl / glog C++ log line: level, date, time, thread id, then the message.
_CPP_LOG = re.compile(r'^[IWEF]\d{4} [\d:.]+\s+\d+ ')


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A 3-step run, then the same command again. TensorFlow's C++ log lines
  are left on (conftest silences them for the other tests)."""
  workdir = tmp_path_factory.mktemp('finished') / 'w'
  cmd = [sys.executable, '-m', 'vit_jax.main', *SMALL, f'--workdir={workdir}',
         '--config.total_steps=3', '--config.checkpoint_every=2']
  env = _env()
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  events = sorted(os.listdir(workdir / 'tensorboard'))
  history = sorted(os.listdir(workdir / 'configs'))
  second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  return dict(workdir=workdir, first=first, second=second, events=events,
              history=history)


def test_tensorflow_load_notes_are_printed_once():
  """TensorFlow logs its load-time notes (oneDNN, CPU features) from two of
  its libraries; `main.import_tensorflow`, which runs that load for the
  tf.data datasets, prints each line once."""
  env = _env()
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  proc = subprocess.run(
      [sys.executable, '-c',
       'from vit_jax import main; main.import_tensorflow()'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  cpp = [_CPP_LOG.sub('', l) for l in lines if _CPP_LOG.match(l)]
  assert cpp, proc.stderr  # TensorFlow did log (else nothing is tested)
  assert len(cpp) == len(set(cpp)), proc.stderr[-3000:]
  assert sum('before absl::InitializeLog()' in l for l in lines) <= 1


def test_library_log_lines_are_not_repeated(finished):
  """No C++ log line twice in a run (the synthetic data of this run loads
  no TensorFlow at all)."""
  for proc in (finished['first'], finished['second']):
    assert 'oneDNN' not in proc.stderr  # TensorFlow's load note
    lines = proc.stderr.splitlines()
    cpp = [_CPP_LOG.sub('', l) for l in lines if _CPP_LOG.match(l)]
    assert len(cpp) == len(set(cpp)), proc.stderr[-3000:]
    absl_note = [l for l in lines if 'before absl::InitializeLog()' in l]
    assert len(absl_note) <= 1, proc.stderr[-3000:]


def test_progress_lines_count_no_compile_time(finished):
  out = finished['first'].stdout.splitlines()
  steps = [l for l in out if l.startswith('step ')]
  assert re.fullmatch(r'step 1/3 loss [\d.]+ lr [\d.]+ grad_norm [\d.]+ '
                      r'\(first step, with compilation: [\d.]+s\)', steps[0])
  for line in steps[1:]:
    assert re.fullmatch(r'step [23]/3 loss [\d.]+ lr [\d.]+ grad_norm [\d.]+ '
                        r'[\d.]+ img/s ETA \d+:\d\d', line), line


def test_last_line_names_checkpoints_and_events(finished):
  w = finished['workdir']
  steps = sorted(int(d) for d in os.listdir(w / 'checkpoints') if d.isdigit())
  assert steps == [2, 3]
  want = (f'checkpoints: {w}/checkpoints (steps 2, 3); TensorBoard events: '
          f'{w}/tensorboard')
  assert finished['first'].stdout.splitlines()[-1] == want
  assert finished['second'].stdout.splitlines()[-1] == want


def test_rerun_of_a_finished_run_says_so_with_its_final_eval(finished):
  first, second = finished['first'].stdout, finished['second'].stdout
  assert finished['second'].returncode == 0, finished['second'].stderr[-3000:]
  [final] = re.findall(r'^eval step 3: (top1 \S+ top5 \S+ loss \S+) ', first,
                       re.M)
  w = finished['workdir']
  assert (f'run already finished: step 3/3 ({w}/checkpoints/3); final eval '
          f'(step 3): {final}; nothing to do') in second
  assert not re.search(r'^(step|eval step) ', second, re.M)  # nothing ran
  # Nothing written: no (empty) event file, no new config record.
  assert sorted(os.listdir(w / 'tensorboard')) == finished['events']
  assert sorted(os.listdir(w / 'configs')) == finished['history']


def test_events_read_back_with_tensorboard(finished):
  """The scalars as TensorBoard's own reader sees them."""
  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  acc = event_accumulator.EventAccumulator(
      str(finished['workdir'] / 'tensorboard'), size_guidance={'tensors': 0})
  acc.Reload()
  [top1] = acc.Tensors('eval/top1')
  assert top1.step == 3
  printed = re.search(r'^eval step 3: top1 (\S+)', finished['first'].stdout,
                      re.M).group(1)
  value = float(tensor_util.make_ndarray(top1.tensor_proto))
  assert f'{value:.4f}' == printed
  assert [e.step for e in acc.Tensors('train/loss')] == [1, 2, 3]
  assert [e.step for e in acc.Tensors('train/img_per_sec')] == [2, 3]
