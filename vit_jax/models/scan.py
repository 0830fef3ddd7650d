"""Blocks with stacked parameters (`nn.scan`), remat policies, and layouts.

Layout. A stack of n blocks stores every parameter of its block once, with a
leading layer axis, under the stack's name without a block number; blocks
after the stack keep their own names:

    stacked:   Transformer/encoderblock/MlpBlock_3/Dense_0/kernel   [n, D, M]
    per block: Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/kernel  [D, M]

Row i of a stacked array is block i's array, bit for bit. A scanned ViT
stacks blocks 0..L-2 (`encoderblock` [L-1, ...]) and keeps its last block as
`encoderblock_{L-1}`: that block may compute the class token alone
(`vit.EncoderBlock.first_token_only`), and apart from the stack it is run
without slicing the stack. A scanned Mixer stacks all L blocks (top-level
`MixerBlock`). `stack` / `unstack` convert flat `/`-joined parameter dicts
between the layouts, `to_layout` converts one to the layout of another
(checkpoint loading); `.npz` files always hold the per-block layout.

Runs. `BlockStack(x, start, stop)` applies stacked blocks start..stop-1 to
x. Its parameters are created once, by an `nn.scan` over all n blocks
(`variable_axes={'params': 0}`, `split_rngs={'params': True, 'dropout':
True}`); a call reads them through `nn.map_variables`: all of them as they
are (the training path: no copy), or the slice [start:stop] (CLS late
insertion runs blocks 0..k-1 on the patch tokens, again on the class token,
then k.. on both). A run of several blocks is an `nn.scan` (one block
compiled); a run of one block, or any run with `unrolled=True` (used while
intermediates are recorded), applies the blocks one by one as children
named `{prefix}_{i}`, so that recorded values sit under
`.../encoderblock/encoderblock_{i}/...` (what `intermediates.collect`
reads) with the shapes of the unrolled model.

Remat. `REMAT_POLICIES` names the `jax.checkpoint_policies` applied per block
with `nn.remat` (scanned or not): 'none' (no remat), 'nothing_saveable'
(recompute the block's forward pass in the backward pass, the least memory),
'dots_saveable' (keep every matmul output), 'dots_with_no_batch_dims_saveable'
(keep the matmul outputs without batch dimensions: the projections and MLP,
not the attention products). The dots policies see `lax.dot_general`s only:
matmuls that a `dot_general` hook computes as a custom call are recomputed
like everything else.

Cost. Without remat, a scan keeps every intermediate of its block for the
backward pass (JAX's residuals cross the loop boundary, where XLA cannot
fuse them away as it does in the unrolled model): more temporary memory
than unrolled. XLA's `memory_analysis` of an SGD train step, XLA:CPU,
float32, 224 px, batch 8: ViT-L/16 7.4 GiB scanned vs 4.0 GiB unrolled,
ViT-H/14 16.2 vs 8.7 GiB; with 'nothing_saveable' 1.5 and 3.0 GiB scanned
(unrolled unchanged: XLA:CPU does not lower it with remat). Scan with a
remat policy (big_vision's default is 'nothing_saveable');
benchmarks/scan_compile.py measures it.
"""

import re
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

REMAT_POLICIES = ('none', 'nothing_saveable', 'dots_saveable',
                  'dots_with_no_batch_dims_saveable')
# Names of block stacks (and of their per-block children: `{name}_{i}`).
STACK_NAMES = ('encoderblock', 'MixerBlock')

_PER_BLOCK = re.compile(r'^(.*?)(' + '|'.join(STACK_NAMES) + r')_(\d+)/(.+)$')
_STACKED = re.compile(r'^(.*?)(' + '|'.join(STACK_NAMES) + r')/(.+)$')


def remat_policy(remat_policy_name: str, remat: bool = False) -> Optional[str]:
  """The policy name a model runs with, None for no remat.

  Args:
    remat_policy_name: one of `REMAT_POLICIES`.
    remat: the older boolean option; True is 'nothing_saveable' (what
      `nn.remat` without a policy does).

  Raises:
    ValueError (one line) for an unknown name, or `remat=True` together with
    another policy than 'nothing_saveable'.
  """
  if remat_policy_name not in REMAT_POLICIES:
    raise ValueError(f'remat_policy={remat_policy_name!r}; allowed: '
                     f'{", ".join(REMAT_POLICIES)}')
  if remat and remat_policy_name not in ('none', 'nothing_saveable'):
    raise ValueError(f'remat=True (= remat_policy=\'nothing_saveable\') '
                     f'contradicts remat_policy={remat_policy_name!r}; set '
                     'only remat_policy')
  if remat_policy_name == 'none':
    return 'nothing_saveable' if remat else None
  return remat_policy_name


def rematted(block_cls, policy: Optional[str], prevent_cse: bool = True):
  """`nn.remat(block_cls)` with the named `jax.checkpoint_policies` policy,
  or `block_cls` itself for None."""
  if policy is None:
    return block_cls
  return nn.remat(block_cls, policy=getattr(jax.checkpoint_policies, policy),
                  prevent_cse=prevent_cse)


def _take(tree, start: int, stop: Optional[int] = None):
  """Row `start` (stop=None) or rows start..stop-1 of every stacked leaf
  (the leaves themselves when that is all of their rows: no copy)."""
  if stop is None:
    return jax.tree.map(lambda v: v[start], tree)
  return jax.tree.map(
      lambda v: v if start == 0 and v.shape[0] == stop else v[start:stop],
      tree)


class BlockStack(nn.Module):
  """`length` blocks of one kind with stacked parameters (module doc).

  Attributes:
    block_cls: the block module class (e.g. `vit.EncoderBlock`).
    block_kwargs: its constructor options, the same for every block.
    length: number of blocks n; parameters are [n, ...].
    prefix: name of block i in per-block runs: `{prefix}_{i}`.
    remat_policy: one of `REMAT_POLICIES`, applied to every block.
  """
  block_cls: Any
  block_kwargs: Mapping[str, Any]
  length: int
  prefix: str
  remat_policy: str = 'none'

  def _block(self, in_scan: bool):
    policy = remat_policy(self.remat_policy)
    cls = rematted(self.block_cls, policy, prevent_cse=not in_scan)
    return lambda name: cls(**self.block_kwargs, name=name)

  def _scan(self, n: int, x, call_kwargs):
    """`nn.scan` of one block (`blocks`) over n stacked parameter rows."""
    def body(block, carry, _):
      return block(carry, **call_kwargs), None
    scanned = nn.scan(body, variable_axes={'params': 0},
                      split_rngs={'params': True, 'dropout': True}, length=n)
    return scanned(self._block(in_scan=True)('blocks'), x, None)[0]

  def _create(self, x, call_kwargs):
    """Creates the [n, ...] parameters (init only): a scan over all blocks.
    Its output is not used (init's output comes from the run that follows)."""
    out = lambda v: {'params': v['params']['blocks']}
    nn.map_variables(lambda mdl, x: mdl._scan(mdl.length, x, call_kwargs),
                     'params', trans_out_fn=out, init=True,
                     mutable=True)(self, x)

  @nn.compact
  def __call__(self, x, start: int = 0, stop: Optional[int] = None, *,
               unrolled: bool = False,
               call_kwargs: Optional[Mapping[str, Any]] = None):
    """Blocks start..stop-1 (stop defaults to n) applied to x in order.

    Args:
      x: the blocks' input, e.g. tokens [B, N, D].
      start, stop: the range of blocks, 0 <= start <= stop <= n.
      unrolled: apply the blocks one by one (named `{prefix}_{i}`) instead
        of scanning.
      call_kwargs: keyword arguments of each block call (e.g.
        `deterministic`).

    Returns:
      The last block's output (x itself for an empty range).
    """
    stop = self.length if stop is None else stop
    if not 0 <= start <= stop <= self.length:
      raise ValueError(f'{self.prefix}: blocks {start}..{stop - 1} are out '
                       f'of range [0, {self.length})')
    call_kwargs = dict(call_kwargs or {})
    if self.is_initializing() and not self.variables.get('params'):
      self._create(x, call_kwargs)
    if start == stop:
      return x
    per_block = unrolled or stop - start == 1

    def view(v):
      t = v['params']
      if per_block:
        return {'params': {f'{self.prefix}_{i}': _take(t, i)
                           for i in range(start, stop)}}
      return {'params': {'blocks': _take(t, start, stop)}}

    def run(mdl, x):
      if not per_block:
        return mdl._scan(stop - start, x, call_kwargs)
      make = mdl._block(in_scan=False)
      for i in range(start, stop):
        x = make(f'{mdl.prefix}_{i}')(x, **call_kwargs)
      return x

    return nn.map_variables(run, 'params', trans_in_fn=view)(self, x)


# Flat parameter dicts: {'Transformer/encoderblock_0/LayerNorm_0/scale': a}.
Flat = dict[str, Any]


def flatten(tree) -> Flat:
  """Nested dict -> {'a/b/c': leaf}."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
  return {'/'.join(k): v for k, v in flat.items()}


def unflatten(flat: Flat) -> dict:
  """{'a/b/c': leaf} -> nested dict."""
  return flax.traverse_util.unflatten_dict(
      {tuple(k.split('/')): v for k, v in flat.items()})


def stacks(flat: Flat) -> dict[str, int]:
  """{'Transformer/encoderblock': n} for the stacked block groups in flat."""
  out = {}
  for k, v in flat.items():
    if m := _STACKED.match(k):
      out.setdefault(m.group(1) + m.group(2), int(np.shape(v)[0]))
  return out


def _stack_arrays(arrays):
  if any(isinstance(a, jax.Array) for a in arrays):
    return jnp.stack([jnp.asarray(a) for a in arrays])
  return np.stack([np.asarray(a) for a in arrays])


def stack(flat: Flat, lengths: Optional[Mapping[str, int]] = None) -> Flat:
  """Per-block keys `P/{name}_{i}/K`, i < n -> `P/{name}/K` [n, ...].

  Args:
    flat: a flat parameter dict, its blocks per block.
    lengths: {group prefix `P/{name}`: n}: the groups to stack and how many
      leading blocks (blocks n.. keep their keys); default: every group
      found, all of its blocks.

  Raises:
    ValueError (one line) when the blocks to stack are not 0..n-1, or differ
    in keys or shapes (naming the key).
  """
  found: dict[str, dict[int, dict[str, Any]]] = {}
  for k, v in flat.items():
    if m := _PER_BLOCK.match(k):
      found.setdefault(m.group(1) + m.group(2), {}).setdefault(
          int(m.group(3)), {})[m.group(4)] = v
  if lengths is None:
    lengths = {g: len(blocks) for g, blocks in found.items()}
  out = {}
  for k, v in flat.items():
    m = _PER_BLOCK.match(k)
    if not (m and int(m.group(3)) < lengths.get(m.group(1) + m.group(2), 0)):
      out[k] = v
  for group, n in lengths.items():
    blocks = found.get(group, {})
    if n == 0:
      continue
    if any(i not in blocks for i in range(n)):
      raise ValueError(f'{group}: block numbers {sorted(blocks)} do not '
                       f'cover 0..{n - 1}; cannot stack them')
    keys = set(blocks[0])
    for i in range(n):
      if set(blocks[i]) != keys:
        diff = sorted(set(blocks[i]) ^ keys)[0]
        raise ValueError(f'{group}_{i}/{diff}: block {i} and block 0 hold '
                         'different arrays; cannot stack them')
    for key in sorted(keys):
      shapes = {np.shape(blocks[i][key]) for i in range(n)}
      if len(shapes) > 1:
        raise ValueError(f'{group}_*/{key}: shapes {sorted(shapes)} differ '
                         'between blocks; cannot stack them')
      out[f'{group}/{key}'] = _stack_arrays([blocks[i][key]
                                             for i in range(n)])
  return out


def unstack(flat: Flat) -> Flat:
  """`P/{name}/K` [n, ...] -> per-block keys `P/{name}_{i}/K` (i < n);
  other keys (blocks after a stack among them) as they are.

  Raises:
    ValueError (one line) when the arrays of a group disagree on n, or a
    block is both in a stack and on its own.
  """
  lengths = stacks(flat)
  out = {}
  for k, v in flat.items():
    m = _STACKED.match(k)
    if not m:
      if k in out:
        raise ValueError(f'{k}: the block is both stacked and on its own')
      out[k] = v
      continue
    group = m.group(1) + m.group(2)
    if np.ndim(v) == 0 or np.shape(v)[0] != lengths[group]:
      raise ValueError(f'{k}: leading axis {np.shape(v)[:1]} differs from '
                       f'the {lengths[group]} blocks of {group}')
    for i in range(lengths[group]):
      key = f'{group}_{i}/{m.group(3)}'
      if key in flat:
        raise ValueError(f'{key}: the block is both stacked and on its own')
      out[key] = v[i]
  return out


def to_layout(flat: Flat, like: Flat) -> Flat:
  """`flat` (either layout) in the layout of `like`: each group stacked in
  `like` (its first n blocks) is stacked as there, every other block is per
  block; keys that are not blocks are left as they are."""
  return stack(unstack(flat), stacks(like))


def stack_tree(params, lengths: Optional[Mapping[str, int]] = None) -> dict:
  """A nested parameter tree with its blocks stacked (`stack`)."""
  return unflatten(stack(flatten(params), lengths))


def unstack_tree(params) -> dict:
  """A nested parameter tree in the per-block layout."""
  return unflatten(unstack(flatten(params)))


def is_scanned(model) -> bool:
  """Whether `model` keeps its blocks stacked (`scan_layers=True`)."""
  return bool(getattr(model, 'scan_layers', False))


def unrolled(model, params=None):
  """The per-block form of a scanned model: (model with scan_layers=False,
  params unstacked); the same function. Non-scanned models pass through.
  With params None, only the model is returned."""
  if is_scanned(model):
    model = model.clone(scan_layers=False)
    if params is not None:
      wrapped = 'params' in params and len(params) == 1
      p = unstack_tree(params['params'] if wrapped else params)
      params = {'params': p} if wrapped else p
  return model if params is None else (model, params)

