"""Sandboxed PATHs for the launch-script tests: a few real tools plus stub
executables (`gcloud`, `sbatch`, `srun`, `scontrol`, ...) that record their
arguments, one JSON list per call, in `<tmp>/calls.jsonl`."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]

# Tools the launch scripts use (besides bash builtins).
_TOOLS = ('bash', 'sh', 'env', 'sed', 'date', 'dirname', 'head', 'tar',
          'gzip', 'git', 'mkdir', 'cat', 'rm')


def _stub_source(body: str) -> str:
  """A Python stub that records argv then runs `body` (python source)."""
  return (f'#!{sys.executable}\n'
          'import json, os, subprocess, sys\n'
          'with open(os.environ["STUB_CALLS"], "a") as f:\n'
          '  f.write(json.dumps([os.path.basename(sys.argv[0])] + '
          'sys.argv[1:]) + "\\n")\n' + body + '\n')


def make_env(tmp: pathlib.Path, stubs: dict[str, str] | None = None,
             **env: str) -> dict[str, str]:
  """Returns an environment whose PATH holds only `_TOOLS` and `stubs`.

  Args:
    tmp: a scratch directory (gets `bin/` and `calls.jsonl`).
    stubs: executable name -> python source run after the call is recorded
      (`sys.argv` available; empty string: exit 0).
    **env: extra environment variables.
  """
  bin_dir = tmp / 'bin'
  bin_dir.mkdir(exist_ok=True)
  for tool in _TOOLS:
    path = shutil.which(tool)
    if path and not (bin_dir / tool).exists():
      (bin_dir / tool).symlink_to(path)
  for name, body in (stubs or {}).items():
    f = bin_dir / name
    f.write_text(_stub_source(body))
    f.chmod(0o755)
  calls = tmp / 'calls.jsonl'
  calls.touch()
  base = {k: v for k, v in os.environ.items()
          if not k.startswith(('SLURM_', 'TPU_', 'GCP_', 'GCS_', 'JAX_'))}
  return {**base, 'PATH': str(bin_dir), 'STUB_CALLS': str(calls),
          'TMPDIR': str(tmp), **env}


def calls(env: dict[str, str]) -> list[list[str]]:
  """The recorded stub calls, in order: [[name, arg1, ...], ...]."""
  text = pathlib.Path(env['STUB_CALLS']).read_text()
  return [json.loads(line) for line in text.splitlines()]


def run(script: str, args, env, cwd=None) -> subprocess.CompletedProcess:
  """Runs `launch/<script>` with bash; stdout and stderr as text."""
  return subprocess.run(['bash', str(REPO / 'launch' / script), *args],
                        env=env, cwd=cwd or REPO, capture_output=True,
                        text=True, timeout=60, check=False)


def plus_lines(stdout: str) -> list[str]:
  """The printed commands (lines starting with '+ ')."""
  return [l[2:] for l in stdout.splitlines() if l.startswith('+ ')]
