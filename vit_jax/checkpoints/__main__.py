"""`python -m vit_jax.checkpoints inspect FILE.npz`: a checkpoint's arrays.

Prints every key with its shape and dtype, then the array and parameter
counts, the naming read (released or Linen) and the architecture the arrays
describe. Exit 1 with one line on an unreadable file.
"""

import argparse
import sys
from typing import Optional, Sequence

from vit_jax.checkpoints import npz


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m vit_jax.checkpoints',
      description='Tools for the official .npz checkpoint files.')
  sub = parser.add_subparsers(dest='command', required=True,
                              metavar='COMMAND')
  inspect = sub.add_parser(
      'inspect', help='list the arrays of an .npz checkpoint',
      description='Lists every array of an .npz checkpoint (key, shape, '
      'dtype) and the total parameter count.')
  inspect.add_argument('file', metavar='FILE.npz',
                       help='a released or vit_jax-written .npz file')
  args = parser.parse_args(argv)
  try:
    npz.inspect(args.file)
  except npz.CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
