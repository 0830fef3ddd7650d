"""What every input reader shares: the dataset summary, the batch slice
that belongs to this process (`input_pipeline`, `inmemory`,
`synthetic` implement the same contract), and the run's class map
`WORKDIR/classes.json`."""

import dataclasses
import json
import os
from typing import Optional, Sequence

from etils import epath
import jax

CLASSES_FILE = 'classes.json'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """num_train / num_eval: examples of the train / eval split (all
  processes); class_names[i] names label i, the one map of every split (for
  image folders the training split's class folders, for tfds the builder's
  label names)."""
  num_classes: int
  num_train: int
  num_eval: int
  class_names: tuple[str, ...]


def save_class_names(workdir: str, class_names: Sequence[str]) -> None:
  """Writes WORKDIR/classes.json, a JSON list: label i -> class_names[i].

  A classes.json already there (a resumed run, or evaluating a trained
  workdir) must list the same names in the same order; otherwise the
  checkpoint's outputs would mean other classes, and it is a one-line error.
  Every process checks; process 0 writes.
  """
  path = epath.Path(workdir) / CLASSES_FILE
  names = [str(c) for c in class_names]
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except ValueError as e:
      raise ValueError(f'{path}: not a JSON list of class names ({e})') from e
    if old != names:
      i = next((i for i, (a, b) in enumerate(zip(old, names)) if a != b),
               min(len(old), len(names)))
      was = repr(old[i]) if i < len(old) else 'none'
      now = repr(names[i]) if i < len(names) else 'none'
      raise ValueError(
          f'{path} (from an earlier run in this workdir) has {len(old)} '
          f'classes, the data now {len(names)}; label {i} was {was}, is now '
          f'{now}: the checkpoint would predict other classes; use a new '
          'workdir or the data it was trained on')
    return
  if jax.process_index() == 0:  # atomically: other processes may read it
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f'{CLASSES_FILE}.{os.getpid()}.tmp'
    tmp.write_text(json.dumps(names, indent=1) + '\n')
    tmp.rename(path)


def process_slice(process_index: Optional[int], process_count: Optional[int],
                  global_batch: int) -> slice:
  """This process's rows [start, stop) of a global batch (default: jax's)."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if global_batch % pc:
    raise ValueError(f'global batch {global_batch} is not divisible by {pc} '
                     'processes')
  local = global_batch // pc
  return slice(pi * local, (pi + 1) * local)
