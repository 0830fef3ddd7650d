"""Orbax checkpoints of the train state in `WORKDIR/checkpoints/<step>/`.

The whole `TrainState` (step, params, optimizer state, RNG) is one Orbax
PyTree; the data position is the step itself (the input pipeline resumes from
`start_step=step`). Saves are asynchronous where possible, every
`checkpoint_every` steps and at the end, keeping the last `keep`.

Orbax writes a step into a temporary directory and renames it (and writes
`commit_success` on object stores) only when complete, so an interrupted save
leaves no step that `latest_step()` returns: a restart resumes from the last
complete checkpoint. Works for local and `gs://` workdirs (etils.epath).
"""

from typing import Any, Optional

from etils import epath
import jax
import orbax.checkpoint as ocp

PyTree = Any


class TrainCheckpointer:
  """A thin wrapper of `ocp.CheckpointManager` for one workdir."""

  def __init__(self, workdir: str, *, save_every: int, keep: int,
               use_async: bool = True):
    self.directory = epath.Path(workdir) / 'checkpoints'
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep or None,
            save_interval_steps=save_every or 10 ** 12,
            enable_async_checkpointing=use_async,
            create=True))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Saves when `step` is on the interval (or `force`); True if saved."""
    return self._manager.save(step, args=ocp.args.StandardSave(state),
                              force=force)

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

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def find_checkpoint(path: str) -> tuple[epath.Path, int]:
  """(checkpoints dir, step) for a workdir, a checkpoints dir or a step dir."""
  p = epath.Path(path)
  if (p / 'checkpoints').is_dir():
    p = p / 'checkpoints'
  if p.name.isdigit() and (p / 'default').exists():
    return p.parent, int(p.name)
  steps = sorted(int(d.name) for d in p.iterdir()
                 if d.name.isdigit() and d.is_dir())
  if not steps:
    raise FileNotFoundError(f'no Orbax checkpoint steps under {path}')
  return p, steps[-1]


def load_params(path: str) -> PyTree:
  """The `params` of one of our Orbax checkpoints (as host arrays).

  `path` is a workdir, its `checkpoints/` dir or one `checkpoints/<step>/`.
  """
  directory, step = find_checkpoint(path)
  item = directory / str(step) / 'default'
  with ocp.StandardCheckpointer() as ckpt:
    meta = ckpt.metadata(item).item_metadata
    # Read every array onto this process's first device, whatever mesh
    # wrote it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        dict(meta))
    restored = ckpt.restore(item, target)
  return jax.tree.map(jax.device_get, restored['params'])
