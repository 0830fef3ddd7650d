"""The TensorFlow-free pp string syntax (`vit_jax.data.pp.syntax`)."""

import subprocess
import sys

import pytest

from vit_jax.data.pp import syntax


def test_parse_ops_and_numeric_args():
  got = syntax.parse(' decode | resize(146, 128)|value_range(-1,1)|',
                     ('decode', 'resize', 'value_range'))
  assert got == [('decode', ()), ('resize', (146.0, 128.0)),
                 ('value_range', (-1.0, 1.0))]


def test_parse_errors_name_the_op_and_allowed():
  with pytest.raises(ValueError, match=r"'flip\(1\)'.*allowed: a, b$"):
    syntax.parse('a|flip(1)', ('b', 'a'))
  with pytest.raises(ValueError, match='arguments must be numbers'):
    syntax.parse('a(x)', ('a',))


def test_syntax_does_not_import_tensorflow():
  code = ('import sys, vit_jax.data.pp.syntax; '
          'sys.exit(int("tensorflow" in sys.modules))')
  assert subprocess.run([sys.executable, '-c', code], check=False,
                        timeout=120).returncode == 0
