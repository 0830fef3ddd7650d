"""Checksum manifests of checkpoint steps: `<step>/vit_jax_manifest.json`.

`vit_jax.checkpoints.train_state` writes one into every step directory once all
processes have written their files of the step and before Orbax makes the
step visible (the rename of its temporary directory), so a finalized step
always carries its manifest. `verify` recomputes it before a restore: a file
that changed, shrank or went missing since the save (bit rot, truncation,
deletion) makes the step fail verification, and the restore falls back to an
older step.

Format (JSON): {"format": 1, "files": {path relative to the step directory:
{"bytes": int, "sha256": hex digest}}}. It covers the step's item
directories (`default/`: the arrays, their metadata and the tree); not the
step-level files Orbax writes or rewrites after the manifest
(`_CHECKPOINT_METADATA` with its commit time, `commit_success.txt`).
"""

import hashlib
import json
from typing import Optional

from etils import epath

NAME = 'vit_jax_manifest.json'
# Step-level files that Orbax (re)writes after the manifest.
UNCOVERED = ('_CHECKPOINT_METADATA', 'commit_success.txt')
FORMAT = 1
_CHUNK = 1 << 20  # bytes read at a time


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _files(step_dir: epath.Path) -> list[str]:
  """Relative paths of the files under `step_dir` that the manifest covers."""
  out = []
  for root, _, names in step_dir.walk():
    for name in names:
      rel = str((root / name).relative_to(step_dir))
      if rel not in UNCOVERED + (NAME, f'.{NAME}.tmp'):
        out.append(rel)
  return sorted(out)


def compute(step_dir) -> dict:
  """The manifest of the files now under `step_dir` (reads them all)."""
  step_dir = epath.Path(step_dir)
  files = {}
  for rel in _files(step_dir):
    path = step_dir / rel
    files[rel] = {'bytes': path.stat().length, 'sha256': _sha256(path)}
  return {'format': FORMAT, 'files': files}


def write(step_dir) -> None:
  """Computes and writes the manifest of `step_dir` (atomic rename)."""
  step_dir = epath.Path(step_dir)
  text = json.dumps(compute(step_dir), indent=1, sort_keys=True)
  tmp = step_dir / f'.{NAME}.tmp'
  tmp.write_text(text)
  tmp.replace(step_dir / NAME)


def exists(step_dir) -> bool:
  return (epath.Path(step_dir) / NAME).exists()


def verify(step_dir) -> Optional[str]:
  """None if every file of the manifest is there with its size and sha256,
  else the first problem found, in a few words."""
  step_dir = epath.Path(step_dir)
  path = step_dir / NAME
  if not path.exists():
    return f'no checksum manifest ({NAME})'
  try:
    manifest = json.loads(path.read_text())
    files = manifest['files']
    if manifest.get('format') != FORMAT or not isinstance(files, dict):
      raise ValueError(f'format {manifest.get("format")!r}')
  except Exception as e:  # pylint: disable=broad-except
    return f'checksum manifest unreadable ({type(e).__name__}: {e})'
  if not files:
    return 'checksum manifest lists no files'
  for rel, want in sorted(files.items()):
    f = step_dir / rel
    if not f.exists():
      return f'{rel} is missing'
    size = f.stat().length
    if size != want['bytes']:
      return f'{rel} has {size} bytes, {want["bytes"]} when saved'
    if _sha256(f) != want['sha256']:
      return f'{rel} changed since the save (sha256 mismatch)'
  return None
