"""Blocks with stacked parameters (`nn.scan`), remat policies, and layouts.

Layout. A scanned stack of L blocks stores every parameter of its block once,
with a leading layer axis, under the stack's name without a block number:

    scanned:   Transformer/encoderblock/MlpBlock_3/Dense_0/kernel   [L, D, M]
    per block: Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/kernel  [D, M]

(ViT's `encoderblock`; Mixer's top-level `MixerBlock`; big_vision's scanned
layout). Row i of a stacked array is block i's array, bit for bit:
`stack` / `unstack` convert flat `/`-joined parameter dicts between the two,
`to_layout` converts one to the layout of another (checkpoint loading).
`.npz` files always hold the per-block layout.

Runs. `BlockStack(x, start, stop)` applies blocks start..stop-1 to x. Its
parameters are created once, by an `nn.scan` over all L blocks
(`variable_axes={'params': 0}`, `split_rngs={'params': True, 'dropout':
True}`); a call reads them through `nn.map_variables`, as the slice
[start:stop] of every stacked array, so one stack can run in segments (CLS
late insertion: blocks 0..k-1 on the patch tokens, again on the class token,
then k..L-1 on both) and a block with other constructor options (the last
ViT block computing the class token alone) shares the stack's parameters.
A run of several blocks is an `nn.scan` over the slice (one block compiled);
a run of one block, or any run with `unrolled=True` (used while
intermediates are recorded), applies the blocks one by one as children
named `{prefix}_{i}`, so that recorded values sit under
`.../encoderblock/encoderblock_{i}/...` (what `intermediates.collect`
reads) with the shapes of the unrolled model.

Remat. `REMAT_POLICIES` names the `jax.checkpoint_policies` applied per block
with `nn.remat` (scanned or not): 'none' (no remat), 'nothing_saveable'
(recompute the block's forward pass in the backward pass, the least memory),
'dots_saveable' (keep every matmul output), 'dots_with_no_batch_dims_saveable'
(keep the matmul outputs without batch dimensions: the projections and MLP,
not the attention products).
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
  (the leaves themselves when that is all of them: no copy)."""
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
    length: number of blocks L; parameters are [L, ...].
    prefix: name of block i in per-block runs: `{prefix}_{i}`.
    remat_policy: one of `REMAT_POLICIES`, applied to every block.
  """
  block_cls: Any
  block_kwargs: Mapping[str, Any]
  length: int
  prefix: str
  remat_policy: str = 'none'

  def _block(self, overrides, in_scan: bool):
    policy = remat_policy(self.remat_policy)
    cls = rematted(self.block_cls, policy, prevent_cse=not in_scan)
    return lambda name: cls(**{**self.block_kwargs, **overrides}, name=name)

  def _scan(self, make, n: int, x, call_kwargs):
    """`nn.scan` of the block `make('blocks')` over n stacked parameter rows."""
    def body(block, carry, _):
      return block(carry, **call_kwargs), None
    scanned = nn.scan(body, variable_axes={'params': 0},
                      split_rngs={'params': True, 'dropout': True}, length=n)
    return scanned(make('blocks'), x, None)[0]

  def _create(self, x, call_kwargs):
    """Creates the [L, ...] parameters (init only): a scan over all blocks.
    Its output is not used (init's output comes from the run that follows)."""
    def create(mdl, x):
      return mdl._scan(mdl._block({}, in_scan=True), mdl.length, x,
                       call_kwargs)
    out = lambda v: {'params': v['params']['blocks']}
    nn.map_variables(create, 'params', trans_out_fn=out, init=True,
                     mutable=True)(self, x)

  @nn.compact
  def __call__(self, x, start: int = 0, stop: Optional[int] = None, *,
               unrolled: bool = False,
               block_overrides: Optional[Mapping[str, Any]] = None,
               call_kwargs: Optional[Mapping[str, Any]] = None):
    """Blocks start..stop-1 (stop defaults to L) applied to x in order.

    Args:
      x: the blocks' input, e.g. tokens [B, N, D].
      start, stop: the range of blocks, 0 <= start <= stop <= L.
      unrolled: apply the blocks one by one (named `{prefix}_{i}`) instead
        of scanning.
      block_overrides: constructor options for the blocks of this run (e.g.
        `first_token_only=True`); parameters are shared all the same.
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
    overrides = dict(block_overrides or {})

    def view(v):
      t = v['params']
      if per_block:
        return {'params': {f'{self.prefix}_{i}': _take(t, i)
                           for i in range(start, stop)}}
      return {'params': {'blocks': _take(t, start, stop)}}

    def run(mdl, x):
      make = mdl._block(overrides, in_scan=not per_block)
      if not per_block:
        return mdl._scan(make, stop - start, x, call_kwargs)
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
  """{'Transformer/encoderblock': L} for the stacked block groups in flat."""
  out = {}
  for k, v in flat.items():
    if m := _STACKED.match(k):
      out.setdefault(m.group(1) + m.group(2), int(np.shape(v)[0]))
  return out


def _stack_arrays(arrays):
  if any(isinstance(a, jax.Array) for a in arrays):
    return jnp.stack([jnp.asarray(a) for a in arrays])
  return np.stack([np.asarray(a) for a in arrays])


def stack(flat: Flat, groups: Optional[Any] = None) -> Flat:
  """Per-block keys `P/{name}_{i}/K` (i = 0..L-1) -> `P/{name}/K` [L, ...].

  Args:
    flat: a flat parameter dict.
    groups: the group prefixes `P/{name}` to stack (e.g.
      'Transformer/encoderblock'); default: every group found.

  Raises:
    ValueError (one line) when a group's block numbers are not 0..L-1 or its
    blocks differ in keys or shapes (naming the key).
  """
  found: dict[str, dict[int, dict[str, Any]]] = {}
  out = {}
  for k, v in flat.items():
    m = _PER_BLOCK.match(k)
    group = m and m.group(1) + m.group(2)
    if m and (groups is None or group in groups):
      found.setdefault(group, {}).setdefault(int(m.group(3)), {})[
          m.group(4)] = v
    else:
      out[k] = v
  for group, blocks in found.items():
    n = len(blocks)
    if sorted(blocks) != list(range(n)):
      raise ValueError(f'{group}: block numbers {sorted(blocks)} are not '
                       f'0..{n - 1}; cannot stack them')
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


def unstack(flat: Flat, groups: Optional[Any] = None) -> Flat:
  """`P/{name}/K` [L, ...] -> per-block keys `P/{name}_{i}/K` (i < L).

  Raises:
    ValueError (one line) when the arrays of a group disagree on L.
  """
  lengths = stacks(flat)
  out = {}
  for k, v in flat.items():
    m = _STACKED.match(k)
    group = m and m.group(1) + m.group(2)
    if not m or (groups is not None and group not in groups):
      out[k] = v
      continue
    if np.ndim(v) == 0 or np.shape(v)[0] != lengths[group]:
      raise ValueError(f'{k}: leading axis {np.shape(v)[:1]} differs from '
                       f'the {lengths[group]} blocks of {group}')
    for i in range(lengths[group]):
      out[f'{group}_{i}/{m.group(3)}'] = v[i]
  return out


def to_layout(flat: Flat, like: Flat) -> Flat:
  """`flat` with each block group stacked or per-block as in `like`.

  A group stacked in `like` (`P/{name}/...`) is stacked in the result; a
  group per-block in `like` (`P/{name}_{i}/...`) is unstacked; everything
  else is left as it is.
  """
  stacked_like = set(stacks(like))
  per_block_like = {m.group(1) + m.group(2) for k in like
                    if (m := _PER_BLOCK.match(k))}
  flat = unstack(flat, per_block_like)
  return stack(flat, stacked_like)


def stack_tree(params) -> dict:
  """A nested parameter tree in the scanned layout (every group stacked)."""
  return unflatten(stack(flatten(params)))


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

