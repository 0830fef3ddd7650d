"""`python -m vit_jax.analysis SUBCOMMAND --out DIR ...` (see `cli`)."""

import sys

from vit_jax.analysis import cli

if __name__ == '__main__':
  sys.exit(cli.main())
