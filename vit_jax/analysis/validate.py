"""Argument checks that fail with one line naming the allowed values.

Every user-facing analysis validates its indices here, so that a bad layer,
feature or head index reads the same everywhere, e.g.
`layer 12 is out of range: allowed 0..11 (ViT with 12 blocks)`.
"""

from typing import Sequence


class AnalysisError(ValueError):
  """A user error in an analysis request; its message is one line."""


def index(what: str, value: int, n: int, context: str = '') -> int:
  """Returns `value` (negative counts from the end) if it is in [0, n)."""
  ctx = f' ({context})' if context else ''
  if not isinstance(value, (int,)) or isinstance(value, bool):
    raise AnalysisError(f'{what} must be an integer, got {value!r}')
  if n <= 0:
    raise AnalysisError(f'{what} {value}: nothing to index{ctx}')
  v = value + n if value < 0 else value
  if not 0 <= v < n:
    raise AnalysisError(f'{what} {value} is out of range: allowed 0..{n - 1} '
                        f'or -{n}..-1{ctx}')
  return v


def indices(what: str, values: Sequence[int], n: int,
            context: str = '') -> list[int]:
  """`index` applied to every element."""
  return [index(what, v, n, context) for v in values]


def fraction(what: str, value: float, low: float = 0.0,
             high: float = 1.0) -> float:
  """Returns `value` if low <= value <= high."""
  if not low <= value <= high:
    raise AnalysisError(f'{what} {value} is out of range: allowed '
                        f'{low}..{high}')
  return float(value)


def choice(what: str, value: str, allowed: Sequence[str]) -> str:
  """Returns `value` if it is one of `allowed`."""
  if value not in allowed:
    raise AnalysisError(f'{what} {value!r} is not known: allowed '
                        f'{", ".join(allowed)}')
  return value
