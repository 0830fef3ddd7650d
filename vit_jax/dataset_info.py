"""What every input reader shares: the dataset summary and the batch slice
that belongs to this process (`input_pipeline`, `inmemory_input`,
`synthetic_input` implement the same contract)."""

import dataclasses
from typing import Optional

import jax


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train: int
  num_eval: int
  class_names: tuple[str, ...]


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
