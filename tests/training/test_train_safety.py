"""Runs that never lose work and never go silently wrong (vit_jax.training.train with
vit_jax.training.workdir_lock, vit_jax.training.config_record, the checkpoint manifests of
vit_jax.checkpoints.train_state): a resume with a changed config is refused by
name, a refused config leaves the record alone, a corrupt or rotten newest
checkpoint is skipped for the previous one (and the run ends bit-identical
to a straight one), a NaN loss stops the run before it is saved, a full
disk during a background save is one error naming the intact steps, a stale
lock of a dead process is taken over.

The reference of the fallback tests is the uninterrupted run itself: the
same config, devices and code, so parameters must be equal bit for bit."""

import errno
import json
import os
import pathlib
import shutil
import socket

from etils import epath
import jax
import numpy as np
import pytest

from tests.tiny_configs import train_config
from vit_jax.training import train
from vit_jax.checkpoints import train_state

pytestmark = pytest.mark.usefixtures('fast_compile')


def run(config, workdir, **kw):
  return train.train_and_evaluate(config, str(workdir),
                                  devices=jax.devices()[:1], **kw)


def tiny(**overrides):
  """`train_config` with one micro-batch per step: what is checked here does
  not depend on how a step splits its batch, and the model is traced once
  per step function (not once per micro-batch)."""
  return train_config(**{'perf.microbatches': 1, **overrides})


def four_steps(**overrides):
  """4 steps, checkpoints at 2 and 4."""
  return tiny(**{'total_steps': 4, 'checkpoint_every': 2, 'log_every': 1,
                 **overrides})


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished 4-step run (steps 2 and 4 saved) and its final params."""
  was = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    workdir = tmp_path_factory.mktemp('trained') / 'w'
    out = run(four_steps(), workdir)
  finally:
    jax.config.update('jax_disable_most_optimizations', was)
  return workdir, jax.device_get(out['state'].params), out['train_losses']


@pytest.fixture(scope='module')
def saved_step_2(trained):
  """The params of step 2 as saved (read by Orbax alone, from the untouched
  run)."""
  return train_state.load_params(str(trained[0] / 'checkpoints' / '2'))


def copy_of(trained, tmp_path) -> pathlib.Path:
  src, _, _ = trained
  dst = tmp_path / 'w'
  shutil.copytree(src, dst)
  return dst


def assert_same_params(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def largest_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / 'default').rglob('*') if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


# --------------------------------------------------------------------------
# Resume with another config (cases 3 and 9).


def test_resume_with_changed_batch_size_is_refused_then_allowed(
    trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  record = (workdir / 'config.json').read_bytes()
  history = (sorted(os.listdir(workdir / 'configs'))
             if (workdir / 'configs').is_dir() else [])
  # Execution keys (mesh, logging, eval, checkpoint cadence) change too, and
  # total_steps grows: neither needs the override.
  config = four_steps(batch_size=8, total_steps=6, log_every=2,
                      checkpoint_every=3, mesh=dict(data=1, fsdp=1, tensor=1))
  with pytest.raises(ValueError) as e:
    run(config, workdir)
  msg = str(e.value)
  assert '\n' not in msg
  assert 'batch_size 16 -> 8' in msg, msg
  # ... the one key to allow (the execution keys are not listed).
  assert '--config.allow_config_change=batch_size to resume' in msg, msg
  # The refused run left the record and the checkpoints as they were.
  assert (workdir / 'config.json').read_bytes() == record
  assert len(history) == 1
  assert sorted(os.listdir(workdir / 'configs')) == history
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert not (workdir / 'lock').exists()
  # The override resumes (at step 4), and records the new config (plus a
  # dated copy).
  config.allow_config_change = 'batch_size'
  out = run(config, workdir)
  assert sorted(out['train_losses']) == [6]  # log_every 2 from step 4
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4', '6']
  assert json.loads((workdir / 'config.json').read_text())['batch_size'] == 8
  assert len(os.listdir(workdir / 'configs')) == len(history) + 1


def test_resume_with_changed_model_and_optimizer_names_each_key(
    trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  config = four_steps(**{'optim.name': 'adamw', 'model_name': 'mu/32'})
  with pytest.raises(ValueError) as e:
    run(config, workdir)
  msg = str(e.value)
  assert 'model_name "mu/16" -> "mu/32"' in msg, msg
  assert 'optim.name "sgd" -> "adamw"' in msg
  assert 'allow_config_change=model_name,optim.name' in msg


def test_rejected_config_does_not_overwrite_the_record(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  record = (workdir / 'config.json').read_bytes()
  with pytest.raises(ValueError, match='config.total_steps=-5 must be '
                     'positive'):
    run(four_steps(total_steps=-5, warmup_steps=0), workdir)
  assert (workdir / 'config.json').read_bytes() == record
  assert json.loads(record)['total_steps'] == 4


# --------------------------------------------------------------------------
# A corrupt or rotten newest checkpoint (cases 4 and 5).


def _truncate(step_dir):
  f = largest_file(step_dir)
  f.write_bytes(f.read_bytes()[:100])


def _empty(step_dir):
  f = largest_file(step_dir)
  f.write_bytes(b'')


def _delete_data(step_dir):
  largest_file(step_dir).unlink()


def _delete_metadata(step_dir):
  (step_dir / 'default' / '_METADATA').unlink()


def _empty_step_dir(step_dir):
  shutil.rmtree(step_dir)
  step_dir.mkdir()


def _empty_default(step_dir):
  shutil.rmtree(step_dir / 'default')
  (step_dir / 'default').mkdir()


def _flip_64_bytes(step_dir):
  f = largest_file(step_dir)
  data = bytearray(f.read_bytes())
  for i in np.random.default_rng(0).choice(len(data), 64, replace=False):
    data[i] ^= 0xFF
  f.write_bytes(bytes(data))


@pytest.mark.parametrize('corrupt', [
    _truncate, _empty, _delete_data, _delete_metadata, _empty_step_dir,
    _empty_default], ids=lambda f: f.__name__.strip('_'))
def test_restore_skips_a_corrupt_newest_checkpoint(corrupt, trained,
                                                   saved_step_2, tmp_path,
                                                   capsys):
  workdir = copy_of(trained, tmp_path)
  corrupt(workdir / 'checkpoints' / '4')
  s = train.setup(four_steps(), str(workdir), jax.devices()[:1])
  capsys.readouterr()
  state = s.restore_or_init()
  stdout = capsys.readouterr().out
  assert int(state.step) == 2
  assert [step for step, _ in s.skipped] == [4]
  skip_lines = [l for l in stdout.splitlines()
                if l.startswith('checkpoint step 4 skipped: ')]
  assert len(skip_lines) == 1, stdout
  assert f'resuming from {workdir}/checkpoints/2' in stdout
  assert_same_params(jax.device_get(state.params), saved_step_2)
  s.checkpointer.close()


def test_rotten_newest_checkpoint_resumes_bit_identical(trained, tmp_path,
                                                        capsys):
  """64 flipped bytes in step 4 (the corruption the checks above do not
  make): the run redoes steps 3 and 4 from step 2 and ends where the
  uninterrupted run ended."""
  workdir = copy_of(trained, tmp_path)
  _, straight_params, straight_losses = trained
  _flip_64_bytes(workdir / 'checkpoints' / '4')
  out = run(four_steps(), workdir)
  stdout = capsys.readouterr().out
  skip_lines = [l for l in stdout.splitlines()
                if l.startswith('checkpoint step 4 skipped: ')]
  assert len(skip_lines) == 1, stdout
  assert skip_lines[0].startswith('checkpoint step 4 skipped: default/')
  assert f'resuming from {workdir}/checkpoints/2' in stdout
  assert out['train_losses'] == {3: straight_losses[3], 4: straight_losses[4]}
  assert_same_params(jax.device_get(out['state'].params), straight_params)
  # The bad step was moved aside (kept), a good step 4 took its place.
  moved = os.listdir(workdir / 'skipped_checkpoints')
  assert len(moved) == 1 and moved[0].startswith('4-')
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert_same_params(train_state.load_params(str(workdir)),
                     straight_params)


def test_no_restorable_checkpoint_is_one_error_naming_each_step(
    trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  _flip_64_bytes(workdir / 'checkpoints' / '4')
  _delete_metadata(workdir / 'checkpoints' / '2')
  with pytest.raises(ValueError) as e:
    run(four_steps(), workdir)
  msg = str(e.value)
  assert '\n' not in msg
  assert msg.startswith(f'no checkpoint of {workdir}/checkpoints can be '
                        'restored: step 4 default/'), msg
  assert 'changed since the save (sha256 mismatch); step 2 ' \
         'default/_METADATA is missing' in msg
  # Nothing was moved or overwritten.
  assert not (workdir / 'skipped_checkpoints').exists()
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']


# --------------------------------------------------------------------------
# NaN loss (case 5, second half).


def test_nan_loss_stops_before_it_is_checkpointed(tmp_path):
  config = tiny(total_steps=6, checkpoint_every=1, log_every=3)
  config.optim.base_lr = 1e6
  config.optim.grad_clip_norm = 0.0
  with pytest.raises(ValueError) as e:
    run(config, tmp_path)
  msg = str(e.value)
  assert msg.startswith('training diverged: loss nan'), msg
  bad = int(msg.split(' at step ')[1].split(';')[0])
  saved = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints')
                 if s.isdigit())
  assert saved and max(saved) < bad, (saved, bad)
  assert f'last checkpoint: step {max(saved)}' in msg
  # What was saved is finite (read back without our restore code).
  for step in saved:
    params = train_state.load_params(str(tmp_path / 'checkpoints' /
                                              str(step)))
    assert all(np.isfinite(np.asarray(x)).all()
               for x in jax.tree.leaves(params))


# --------------------------------------------------------------------------
# A full disk during an asynchronous save (case 13).


def _fail_writes_under(monkeypatch, fragment: str):
  """Makes every epath write into a path containing `fragment` fail with
  ENOSPC (Orbax writes the step metadata this way in its background save
  thread)."""
  cls = type(epath.Path('/'))
  original = cls.write_text

  def write_text(self, *args, **kwargs):
    if fragment in str(self):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return original(self, *args, **kwargs)

  monkeypatch.setattr(cls, 'write_text', write_text)


# Orbax leaves asyncio callbacks of the failed save behind (reported at
# garbage collection; vit_jax.main silences them).
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_full_disk_during_async_save_keeps_earlier_steps(
    trained, tmp_path, monkeypatch):
  _, straight_params, _ = trained
  config = four_steps()
  config.async_checkpoints = True
  _fail_writes_under(monkeypatch, '/checkpoints/4.orbax-checkpoint-tmp')
  with pytest.raises(ValueError) as e:
    run(config, tmp_path)
  msg = str(e.value)
  assert '\n' not in msg
  assert msg.startswith(f'saving checkpoint step 4 in {tmp_path}/checkpoints '
                        'failed: no space left on device'), msg
  assert msg.endswith('earlier checkpoints are intact (steps 2): rerun the '
                      'same command to resume from step 2')
  assert not (tmp_path / 'lock').exists()
  monkeypatch.undo()
  out = run(config, tmp_path)  # the space is back
  assert sorted(out['train_losses']) == [3, 4]
  assert_same_params(jax.device_get(out['state'].params), straight_params)
  assert not [d for d in os.listdir(tmp_path / 'checkpoints')
              if d.endswith('.orbax-checkpoint-tmp')]


# --------------------------------------------------------------------------
# Stale lock (case 2, second half; the refusal is in tests/test_main.py).


def test_stale_lock_of_a_dead_process_is_taken_over(trained, tmp_path,
                                                    capsys):
  """A run killed after its last save left its lock: the rerun takes it
  over (and finds the run finished)."""
  workdir = copy_of(trained, tmp_path)
  pid_max = int(pathlib.Path('/proc/sys/kernel/pid_max').read_text())
  dead = {'host': socket.gethostname(), 'pid': pid_max + 1,  # cannot exist
          'started': '2026-01-01 00:00:00 UTC'}
  (workdir / 'lock').write_text(json.dumps(dead))
  out = run(four_steps(), workdir)
  assert out['step'] == 4
  stdout = capsys.readouterr().out
  lines = [l for l in stdout.splitlines() if 'stale lock' in l]
  assert lines == [
      'warning: taking over the stale lock of a run that is gone (host '
      f'{dead["host"]} pid {dead["pid"]} started 2026-01-01 00:00:00 UTC; '
      f'lock file {workdir}/lock)']
  assert 'run already finished: step 4/4' in stdout
  assert not (workdir / 'lock').exists()  # released at the end


def test_lock_of_another_host_is_refused(tmp_path):
  other = {'host': 'elsewhere-' + socket.gethostname(), 'pid': 1,
           'started': '2026-01-01 00:00:00 UTC'}
  (tmp_path / 'lock').write_text(json.dumps(other))
  with pytest.raises(ValueError) as e:
    run(tiny(total_steps=1, warmup_steps=1), tmp_path)
  assert str(e.value).startswith(
      f'workdir {tmp_path} is in use by another run (host {other["host"]} '
      'pid 1 started 2026-01-01 00:00:00 UTC')
  assert json.loads((tmp_path / 'lock').read_text()) == other  # untouched
  assert not (tmp_path / 'checkpoints').exists()
