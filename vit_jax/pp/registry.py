"""The pp string language: `op1(arg, ...)|op2|...`, and the op registry.

An op is registered as a factory `get_<op>(*args) -> fn(image, seed)`:
`image` is a tf.Tensor ([H, W, 3], or encoded bytes before `decode`), `seed`
an int32 [2] tensor for `tf.random.stateless_*` ops. Each op derives its own
seed from it, so a preprocessed example is a pure function of (example,
seed): what makes preemption-safe resume exact. Arguments are numbers.
"""

import re
from typing import Callable

import tensorflow as tf

OpFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
OPS: dict[str, Callable[..., OpFn]] = {}
_OP_RE = re.compile(r'^(\w+)(?:\((.*)\))?$')


def register(name: str):
  """Decorator adding an op factory under `name`."""
  def add(factory):
    OPS[name] = factory
    return factory
  return add


def parse(pp: str) -> list[tuple[str, tuple[float, ...]]]:
  """'a(1,2)|b' -> [('a', (1.0, 2.0)), ('b', ())]; unknown ops raise."""
  ops = []
  for tok in filter(None, (t.strip() for t in pp.split('|'))):
    m = _OP_RE.match(tok)
    if not m or m.group(1) not in OPS:
      raise ValueError(f'pp op {tok!r} in {pp!r}: unknown; allowed: '
                       f'{", ".join(sorted(OPS))}')
    try:
      args = tuple(float(a) for a in (m.group(2) or '').split(',') if a)
    except ValueError as e:
      raise ValueError(f'pp op {tok!r} in {pp!r}: arguments must be '
                       'numbers') from e
    ops.append((m.group(1), args))
  return ops


def build(pp: str) -> OpFn:
  """Composes the ops of a pp string into one fn(image, seed)."""
  fns = []
  for name, args in parse(pp):
    try:
      fns.append(OPS[name](*args))
    except TypeError as e:
      raise ValueError(f'pp op {name}{args}: wrong arguments ({e})') from e

  def apply(image, seed):
    for i, fn in enumerate(fns):
      image = fn(image, tf.random.experimental.stateless_fold_in(seed, i))
    return image
  return apply
