"""Device mesh and parameter partitioning: rules as data, applied by regex.

The mesh has three named axes:
  `data`    data parallel: the batch is split, parameters are replicated;
  `fsdp`    fully-sharded data parallel: the batch is split *and* every large
            parameter (and its optimizer state) is split along one dimension;
  `tensor`  tensor (Megatron) parallel: attention heads and MLP hidden units
            are split; the batch is replicated along this axis.
`config.mesh` gives the size of each axis (-1 = all remaining devices).

Partition rules are data: a tuple of `(regex, PartitionSpec)` pairs, matched
with `re.search` against a leaf's `/`-joined path in the train state (so the
same rule covers a kernel and its momentum in the optimizer state). The first
matching rule wins; a spec whose length differs from the leaf's rank, or whose
axis does not divide the dimension, is dropped for that dimension. The
`fsdp` pass then shards the largest still-unsharded divisible dimension of
each leaf with at least `fsdp_min_size` elements over `fsdp`.
"""

import math
import re
from typing import Any, Sequence

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the batch dimension is split over these

# Megatron-style splits of the transformer (ViT and the MAP head):
# q/k/v kernels [D, heads, D/heads], out kernel [heads, D/heads, D],
# MLP Dense_0 [D, M] (column split), Dense_1 [M, D] (row split).
TENSOR_PARALLEL_RULES = (
    (r'MultiHeadDotProductAttention_\d+/(query|key|value)/kernel$',
     P(None, 'tensor', None)),
    (r'MultiHeadDotProductAttention_\d+/(query|key|value)/bias$',
     P('tensor', None)),
    (r'MultiHeadDotProductAttention_\d+/out/kernel$', P('tensor', None, None)),
    (r'MlpBlock_\d+/Dense_0/kernel$', P(None, 'tensor')),
    (r'MlpBlock_\d+/Dense_0/bias$', P('tensor')),
    (r'MlpBlock_\d+/Dense_1/kernel$', P('tensor', None)),
    # Mixer MLPs are named the same way (token_mixing / channel_mixing).
    (r'_mixing/Dense_0/kernel$', P(None, 'tensor')),
    (r'_mixing/Dense_0/bias$', P('tensor')),
    (r'_mixing/Dense_1/kernel$', P('tensor', None)),
)

RULES = {
    'default': TENSOR_PARALLEL_RULES,  # no-op on a mesh with tensor=1
    'replicated': (),
}


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  """Axis sizes {data, fsdp, tensor} from `config.mesh`; -1 fills the rest.

  Raises:
    ValueError (one line) when the sizes do not multiply to `num_devices`.
  """
  sizes = {a: int(mesh_config.get(a, 1)) for a in AXES}
  unknown = set(mesh_config.keys()) - set(AXES)
  if unknown:
    raise ValueError(f'config.mesh: unknown axis {sorted(unknown)}; '
                     f'allowed: {", ".join(AXES)}')
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f'config.mesh: at most one axis may be -1, got {free}')
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f'config.mesh: sizes must be positive or -1, got {sizes}')
  if free:
    if num_devices % fixed:
      raise ValueError(f'config.mesh={sizes}: {num_devices} devices are not '
                       f'divisible by {fixed}')
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f'config.mesh={sizes} needs {math.prod(sizes.values())} '
                     f'devices, there are {num_devices}')
  return sizes


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A `Mesh` with axes ('data', 'fsdp', 'tensor') over all devices."""
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in AXES)
  try:  # topology-aware order on TPU/GPU; plain order on CPU
    arr = jax.experimental.mesh_utils.create_device_mesh(
        shape, devices, allow_split_physical_axes=True)
  except Exception:  # pylint: disable=broad-except
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data and fsdp axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def path_str(path) -> str:
  """A pytree key path as 'a/b/0/c'."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def _fit(spec: Sequence[Any], shape: Sequence[int],
         sizes: dict[str, int]) -> list[Any]:
  """Drops axes of `spec` that do not divide their dimension."""
  if len(spec) != len(shape):
    return [None] * len(shape)
  out = []
  for axis, dim in zip(spec, shape):
    names = (axis,) if isinstance(axis, str) else tuple(axis or ())
    n = math.prod(sizes[a] for a in names)
    out.append(axis if names and n > 1 and dim % n == 0 else None)
  return out


def leaf_spec(path: str, shape: Sequence[int], rules, sizes: dict[str, int],
              fsdp_min_size: int = 2 ** 12) -> P:
  """The PartitionSpec of one leaf (see the module docstring)."""
  spec = [None] * len(shape)
  for pattern, rule_spec in rules:
    if re.search(pattern, path):
      spec = _fit(tuple(rule_spec), shape, sizes)
      break
  n = sizes.get('fsdp', 1)
  if n > 1 and math.prod(shape) >= fsdp_min_size:
    free = [i for i, s in enumerate(spec) if s is None and shape[i] % n == 0]
    if free:
      i = max(free, key=lambda i: shape[i])
      spec[i] = 'fsdp'
  return P(*spec)


def tree_shardings(tree, mesh: Mesh, rules_name: str = 'default',
                   fsdp_min_size: int = 2 ** 12):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  if rules_name not in RULES:
    raise ValueError(f'config.partition_rules={rules_name!r}; allowed: '
                     f'{", ".join(RULES)}')
  rules = RULES[rules_name]
  sizes = dict(mesh.shape)

  def one(path, leaf):
    shape = getattr(leaf, 'shape', ())
    return NamedSharding(
        mesh, leaf_spec(path_str(path), shape, rules, sizes, fsdp_min_size))

  return jax.tree_util.tree_map_with_path(one, tree)


def describe(shardings, tree) -> list[str]:
  """Lines 'path shape spec' for logging where each parameter lives."""
  lines = []
  flat_s = jax.tree_util.tree_leaves_with_path(shardings)
  flat_t = jax.tree_util.tree_leaves(tree)
  for (path, s), leaf in zip(flat_s, flat_t):
    lines.append(f'{path_str(path)} {tuple(leaf.shape)} {s.spec}')
  return lines
