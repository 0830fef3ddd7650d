"""The op registry of the pp language (syntax: `vit_jax.data.pp.syntax`).

An op is registered as a factory `get_<op>(*args) -> fn(image, seed)`:
`image` is a tf.Tensor ([H, W, 3], or encoded bytes before `decode`), `seed`
an int32 [2] tensor for `tf.random.stateless_*` ops. Each op derives its own
seed from it, so a preprocessed example is a pure function of (example,
seed): what makes preemption-safe resume exact. Arguments are numbers.
"""

from typing import Callable

import tensorflow as tf

from vit_jax.data.pp import syntax

OpFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
OPS: dict[str, Callable[..., OpFn]] = {}


def register(name: str):
  """Decorator adding an op factory under `name`."""
  def add(factory):
    OPS[name] = factory
    return factory
  return add


def parse(pp: str) -> list[tuple[str, tuple[float, ...]]]:
  """'a(1,2)|b' -> [('a', (1.0, 2.0)), ('b', ())]; unknown ops raise."""
  return syntax.parse(pp, OPS)


def build(pp: str) -> OpFn:
  """Composes the ops of a pp string into one fn(image, seed)."""
  return build_ops(parse(pp))


def build_ops(ops: list[tuple[str, tuple[float, ...]]]) -> OpFn:
  """Composes parsed ops (see `parse`) into one fn(image, seed)."""
  fns = []
  for name, args in ops:
    try:
      fns.append(OPS[name](*args))
    except TypeError as e:
      raise ValueError(f'pp op {name}{args}: wrong arguments ({e})') from e

  def apply(image, seed):
    for i, fn in enumerate(fns):
      image = fn(image, tf.random.experimental.stateless_fold_in(seed, i))
    return image
  return apply
