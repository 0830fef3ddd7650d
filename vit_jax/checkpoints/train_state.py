"""Orbax checkpoints of the train state in `WORKDIR/checkpoints/<step>/`.

The whole `TrainState` (step, params, optimizer state, RNG) is one Orbax
PyTree; the data position is the step itself (the input pipeline resumes from
`start_step=step`). Saves are asynchronous where possible, every
`checkpoint_every` steps and at the end, keeping the last `keep`.

Orbax writes a step into a temporary directory and renames it (and writes
`commit_success` on object stores) only when complete, so an interrupted save
leaves no step that `latest_step()` returns: a restart resumes from the last
complete checkpoint. Works for local and `gs://` workdirs (etils.epath).

Every step carries a checksum manifest (`vit_jax.checkpoints.manifest`),
written by process 0 after all files of the step are written and before the
rename. `restore_latest` walks back from the newest step to the newest one
whose manifest verifies, that loads, and whose values are finite; it prints
one line per step it skips. A failed save (e.g. a full disk) raises a
one-line `CheckpointError` naming the step and the intact steps.
"""

import collections
import datetime
from typing import Any, Callable, Optional

from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import orbax.checkpoint as ocp

from vit_jax.checkpoints import manifest
from vit_jax.training import metrics
from vit_jax.training import process_agree

PyTree = Any
TMP_SUFFIX = '.orbax-checkpoint-tmp'  # Orbax's temporary step directories
SKIPPED_DIR = 'skipped_checkpoints'   # where unusable newer steps are moved


class CheckpointError(ValueError):
  """A checkpoint could not be saved or restored (one-line message)."""


def one_line(e: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, at most `limit` characters."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  text = f'{type(e).__name__}: {text}' if text else type(e).__name__
  return text if len(text) <= limit else text[:limit - 3] + '...'


def _save_failure(e: BaseException) -> str:
  text = str(e)
  if ("os_error_code='28'" in text or 'No space left' in text
      or getattr(e, 'errno', None) == 28):
    return f'no space left on device ({one_line(e, 200)})'
  return one_line(e)


def _all_finite(tree: PyTree) -> bool:
  leaves = [x for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return True
  return bool(jax.jit(lambda ls: jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(x)) for x in ls])))(leaves))


class TrainCheckpointer:
  """A thin wrapper of `ocp.CheckpointManager` for one workdir."""

  def __init__(self, workdir: str, *, save_every: int, keep: int,
               use_async: bool = True):
    self.workdir = epath.Path(workdir)
    self.directory = self.workdir / 'checkpoints'
    self._use_async = use_async
    # Steps whose save is under way, oldest first: Orbax runs one save at a
    # time and calls `_write_manifest` once per save, in order.
    self._pending = collections.deque()
    self._in_flight: Optional[int] = None
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep or None,
            save_interval_steps=save_every or 10 ** 12,
            # Always the async checkpointer (it runs the manifest callback);
            # `use_async=False` waits for each save instead.
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(
                post_finalization_callback=self._write_manifest),
            create=True))

  def _write_manifest(self) -> None:
    """Orbax's post-finalization callback (process 0, background thread):
    all files of the step are written, the step is not yet visible."""
    step = self._pending.popleft()
    tmp = self.directory / f'{step}{TMP_SUFFIX}'
    manifest.write(tmp if tmp.exists() else self.directory /
                              str(step))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def _fail(self, step: Optional[int], e: BaseException):
    self._pending.clear()
    self._in_flight = None
    try:
      self._manager.reload()  # the steps on disk
    except Exception:  # pylint: disable=broad-except
      pass
    intact = [s for s in self.all_steps() if s != step]
    keep = (f'earlier checkpoints are intact (steps '
            f'{", ".join(map(str, intact))}): rerun the same command to '
            f'resume from step {intact[-1]}' if intact else
            'there is no earlier checkpoint')
    raise CheckpointError(
        f'saving checkpoint step {step} in {self.directory} failed: '
        f'{_save_failure(e)}; {keep}') from None

  def save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Saves when `step` is on the interval (or `force`); True if saved.

    Raises:
      CheckpointError: this save or the previous (background) one failed.
    """
    if not force and not self._manager.should_save(step):
      self.check()
      return False
    self.wait()  # what Orbax's save does first; a failure names its step
    if jax.process_index() == 0:
      self._pending.append(step)
    self._in_flight = step
    try:
      saved = self._manager.save(step, args=ocp.args.StandardSave(state),
                                 force=force)
    except Exception as e:  # pylint: disable=broad-except
      self._fail(step, e)
    if not saved:
      if self._pending and self._pending[-1] == step:
        self._pending.pop()
      self._in_flight = None
    elif not self._use_async:
      self.wait()
    return saved

  def check(self) -> None:
    """Raises CheckpointError if a background save has failed (cheap; does
    not wait for a save under way)."""
    if self._in_flight is not None and not (
        self._manager.is_saving_in_progress()):
      self.wait()

  def restore(self, step: int, abstract_state: PyTree) -> PyTree:
    """Restores `step` with the shardings and structure of `abstract_state`.

    Args:
      step: a saved step.
      abstract_state: the state as `jax.ShapeDtypeStruct`s with shardings;
        arrays are read straight into those shardings.
    """
    restored = self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract_state))
    # Orbax returns NamedTuples (optax states) as tuples: put the exact
    # structure back.
    return jax.tree.unflatten(jax.tree.structure(abstract_state),
                              jax.tree.leaves(restored))

  def restore_latest(self, abstract_state: PyTree,
                     step_of: Callable[[PyTree], int]
                     ) -> Optional[tuple[int, PyTree, list[tuple[int, str]]]]:
    """The newest step that verifies, loads and is finite.

    Walks back from the newest step; prints one line per step it skips.
    Steps are verified against their checksum manifests (by process 0, the
    verdict is shared); a workdir with no manifest at all (written before
    manifests existed) is restored unverified, with a warning line.

    Args:
      abstract_state: as for `restore`.
      step_of: the step recorded in a restored state (must equal the
        directory's step).

    Returns:
      None if there is no step, else (step, state, [(skipped step, reason)]).

    Raises:
      CheckpointError: there are steps but none of them can be used.
    """
    steps = self.all_steps()[::-1]
    if not steps:
      return None
    unverified = process_agree.from_process_0(lambda: '' if any(
        manifest.exists(self.directory / str(s)) for s in steps)
                                              else 'legacy')
    if unverified:
      metrics.log(f'warning: no checkpoint in {self.directory} has a checksum '
                  'manifest; restoring without verification')
    skipped = []
    for step in steps:
      reason = '' if unverified else process_agree.from_process_0(
          lambda s=step: manifest.verify(self.directory / str(s))
          or '')
      state = None
      if not reason:
        try:
          state = self.restore(step, abstract_state)
        except Exception as e:  # pylint: disable=broad-except
          if jax.process_count() > 1:  # no lockstep retry across processes
            raise CheckpointError(f'restoring checkpoint step {step} of '
                                  f'{self.directory} failed: {one_line(e)}'
                                  ) from None
          reason = f'does not load ({one_line(e)})'
      if not reason and step_of(state) != step:
        reason = f'holds step {step_of(state)}, not {step}'
      if not reason and not _all_finite(state):
        reason = 'holds NaN or Inf values'
      if not reason:
        return step, state, skipped
      metrics.log(f'checkpoint step {step} skipped: {reason}')
      skipped.append((step, reason))
    raise CheckpointError(
        f'no checkpoint of {self.directory} can be restored: ' +
        '; '.join(f'step {s} {r}' for s, r in skipped) +
        ' (move them away to start afresh)')

  def move_aside(self, steps: list[int]) -> None:
    """Moves `steps` (skipped by a restore) to `WORKDIR/skipped_checkpoints/`
    so that new saves can take their numbers; kept for inspection."""
    if not steps:
      return
    if jax.process_index() == 0:
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
          '%Y%m%dT%H%M%SZ')
      dest = self.workdir / SKIPPED_DIR
      dest.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = dest / f'{step}-{stamp}'
        (self.directory / str(step)).rename(target)
        metrics.log(f'moved checkpoint step {step} to {target}')
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('vit_jax_move_aside')
    self._manager.reload()

  def remove_unfinished(self) -> None:
    """Deletes the temporary directories of saves that never completed
    (a killed run, a full disk). Only for the run that holds the workdir."""
    if jax.process_index() == 0 and self.directory.exists():
      for d in self.directory.iterdir():
        if d.name.endswith(TMP_SUFFIX) and d.name[:-len(TMP_SUFFIX)].isdigit():
          d.rmtree()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('vit_jax_remove_unfinished')

  def wait(self) -> None:
    """Waits for the save under way; CheckpointError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._fail(self._in_flight, e)
    finally:
      if not self._manager.is_saving_in_progress():
        self._in_flight = None

  def close(self) -> None:
    """Waits for the save under way (CheckpointError if it failed), then
    releases Orbax's threads."""
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        pass  # the failure of a save was reported by wait()

  def close_quietly(self) -> None:
    """`close` for a run that is already failing: errors are dropped."""
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def find_checkpoint(path: str) -> tuple[epath.Path, int]:
  """(checkpoints dir, step) for a workdir, a checkpoints dir or a step dir.

  For a workdir or checkpoints dir: the newest step whose checksum manifest
  verifies (the newest step if none has a manifest).
  """
  p = epath.Path(path)
  if (p / 'checkpoints').is_dir():
    p = p / 'checkpoints'
  if p.name.isdigit() and (p / 'default').exists():
    return p.parent, int(p.name)
  steps = sorted((int(d.name) for d in p.iterdir()
                  if d.name.isdigit() and d.is_dir()), reverse=True)
  if not steps:
    raise FileNotFoundError(f'no Orbax checkpoint steps under {path}')
  if not any(manifest.exists(p / str(s)) for s in steps):
    return p, steps[0]
  reasons = []
  for s in steps:
    reason = manifest.verify(p / str(s))
    if reason is None:
      return p, s
    reasons.append(f'step {s} {reason}')
  raise FileNotFoundError(f'no verified checkpoint under {path}: '
                          + '; '.join(reasons))


def load_state(path: str) -> PyTree:
  """Everything one of our Orbax checkpoints holds (step, params, optimizer
  state, rng) as a tree of host arrays, whatever mesh wrote it.

  `path` is a workdir, its `checkpoints/` dir or one `checkpoints/<step>/`.
  """
  directory, step = find_checkpoint(path)
  item = directory / str(step) / 'default'
  with ocp.StandardCheckpointer() as ckpt:
    meta = ckpt.metadata(item).item_metadata
    # Read every array onto this process's first device.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        dict(meta))
    restored = ckpt.restore(item, target)
  return jax.tree.map(jax.device_get, restored)


def load_params(path: str) -> PyTree:
  """The `params` of one of our Orbax checkpoints (as host arrays).

  `path` is a workdir, its `checkpoints/` dir or one `checkpoints/<step>/`.
  """
  return load_state(path)['params']
