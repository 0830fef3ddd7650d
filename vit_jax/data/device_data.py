"""Host batches -> global `jax.Array`s sharded over the mesh, with prefetch.

Each process holds its local slice of the global batch (numpy, leading
dimension local_batch); `jax.make_array_from_process_local_data` assembles the
global array [global_batch, ...] split over the mesh's batch axes without any
cross-host copy. `prefetch` keeps `size` batches in flight so the host
transfers overlap with the device step.
"""

import collections
import itertools
from typing import Iterable, Iterator

import jax
import numpy as np


def to_global(batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Each leaf [local_batch, ...] -> a global jax.Array [global_batch, ...]."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       np.asarray(x)), batch)


def prefetch(batches: Iterable[dict], sharding: jax.sharding.Sharding,
             size: int = 2) -> Iterator[dict]:
  """Yields `to_global(b)` for each b, with `size` batches placed ahead."""
  it = iter(batches)
  queue = collections.deque(
      to_global(b, sharding) for b in itertools.islice(it, max(size, 1)))
  while queue:
    yield queue.popleft()
    for b in itertools.islice(it, 1):
      queue.append(to_global(b, sharding))
