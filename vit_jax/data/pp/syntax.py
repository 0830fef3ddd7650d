"""The pp string syntax alone (no TensorFlow): `op1(arg, ...)|op2|...`.

Shared by the tf.data ops (`vit_jax.data.pp.registry`) and usable by any other
reader (e.g. the numpy one in `vit_jax.data.inmemory`), so one config
string means the same ops everywhere. Arguments are numbers.
"""

import re
from typing import Collection

_OP_RE = re.compile(r'^(\w+)(?:\((.*)\))?$')


def parse(pp: str,
          allowed: Collection[str]) -> list[tuple[str, tuple[float, ...]]]:
  """'a(1,2)|b' -> [('a', (1.0, 2.0)), ('b', ())].

  Args:
    pp: the pp string; empty tokens are ignored.
    allowed: op names this reader implements.

  Raises:
    ValueError: (one line) an op not in `allowed`, or non-numeric arguments.
  """
  ops = []
  for tok in filter(None, (t.strip() for t in pp.split('|'))):
    m = _OP_RE.match(tok)
    if not m or m.group(1) not in allowed:
      raise ValueError(f'pp op {tok!r} in {pp!r}: unknown; allowed: '
                       f'{", ".join(sorted(allowed))}')
    try:
      args = tuple(float(a) for a in (m.group(2) or '').split(',') if a)
    except ValueError as e:
      raise ValueError(f'pp op {tok!r} in {pp!r}: arguments must be '
                       'numbers') from e
    ops.append((m.group(1), args))
  return ops
