"""The record of a run's config in its workdir, and the resume check.

`WORKDIR/config.json` is the config of the latest run on the workdir;
`WORKDIR/configs/config-<UTC time>.json` keeps the config of every run.
Both are written by `write` (process 0, atomic renames) only once a run has
passed every check, so a refused run leaves them as they were.

`check_resume(config, recorded)` compares the config of a run that resumes
a checkpoint with the recorded one. Every key changes the meaning of the
run (the model, data, batch size, optimizer, schedule, seed, ...) except
those of `FREE_KEYS` (how the run is executed and reported) and
`total_steps`, which may change to train longer or stop earlier (the lr
schedule then spans the new total). A change of any other key refuses the
resume with one line naming each key and both values, unless
`config.allow_config_change` lists it (comma-separated keys or prefixes
such as `optim`, or `all`).
"""

import datetime
import json
from typing import Any, Optional

from etils import epath

RECORD = 'config.json'
HISTORY_DIR = 'configs'
ALLOW_KEY = 'allow_config_change'
# May change between the runs of one workdir: execution and reporting only.
FREE_KEYS = (
    'trainer', ALLOW_KEY, 'allow_custom_model', 'log_every', 'eval_every',
    'eval_at_start',
    'checkpoint_every', 'keep_checkpoints', 'async_checkpoints',
    'eval_batch_size', 'partition_rules',
    'parallel_microbatches',  # records older than config.perf.microbatches
    'pretrained_path',  # read only by a fresh start, not by a resume
    'data.prefetch', 'data.cache', 'data.tfds_data_dir', 'data.tfds_manual_dir',
)
FREE_PREFIXES = ('mesh.',  # checkpoints do not depend on the mesh
                 'perf.')  # nor on how the steps are computed
EXTENDABLE_KEYS = ('total_steps',)
_ABSENT = '<absent>'


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'a.b': value} of nested dicts."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict) and v:
      out.update(flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def as_dict(config) -> dict[str, Any]:
  """The config as the JSON record holds it (same value types)."""
  return json.loads(config.to_json_best_effort())


def read(workdir: str) -> Optional[dict[str, Any]]:
  """The recorded config of `workdir`, None if there is none.

  Raises:
    ValueError: the record exists but is not JSON.
  """
  path = epath.Path(workdir) / RECORD
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); fix or remove it to '
                     'resume') from None


def _allowed(config_dict: dict, keys: set[str]) -> tuple[bool, list[str]]:
  """(all allowed?, listed prefixes) from config.allow_config_change."""
  spec = config_dict.get(ALLOW_KEY) or ''
  items = [s.strip() for s in str(spec).split(',') if s.strip()]
  if 'all' in items:
    return True, []
  unknown = [i for i in items if not any(
      k == i or k.startswith(i + '.') for k in keys)]
  if unknown:
    raise ValueError(f'config.{ALLOW_KEY}: unknown key(s) '
                     f'{", ".join(unknown)}; give config keys such as '
                     'batch_size,optim.base_lr, a prefix such as optim, or all')
  return False, items


def _fmt(v: Any) -> str:
  return _ABSENT if v is _ABSENT else json.dumps(v)


def check_resume(config, recorded: dict[str, Any],
                 workdir: str) -> list[str]:
  """Checks a resume of `workdir` with `config` against its `recorded`
  config.

  Returns:
    Lines to print: the changes allowed by config.allow_config_change
    ('config.KEY OLD -> NEW ...'); `total_steps` is not checked here.

  Raises:
    ValueError: one line naming each changed key with both values, unless
      config.allow_config_change lists it.
  """
  new, old = flatten(as_dict(config)), flatten(recorded)
  keys = set(new) | set(old)
  allow_all, allowed = _allowed(new, keys)
  changed = []
  notes = []
  for k in sorted(keys):
    a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
    if a == b or k in FREE_KEYS or k.startswith(FREE_PREFIXES):
      continue
    if k in EXTENDABLE_KEYS:
      continue  # vit_jax.training.train reports it, with the lr it changes
    change = f'{k} {_fmt(a)} -> {_fmt(b)}'
    if allow_all or any(k == p or k.startswith(p + '.') for p in allowed):
      notes.append(f'config.{change} on resume (allowed by '
                   f'config.{ALLOW_KEY})')
    else:
      changed.append(change)
  if changed:
    raise ValueError(
        f'resuming {workdir} with a changed config: {", ".join(changed)} '
        f'(recorded in {epath.Path(workdir) / RECORD}); use a new workdir, '
        f'or pass --config.{ALLOW_KEY}='
        f'{",".join(c.split(" ", 1)[0] for c in changed)} to resume anyway')
  return notes


def _write_atomic(path: epath.Path, text: str) -> None:
  tmp = path.parent / f'.{path.name}.tmp'
  tmp.write_text(text)
  tmp.replace(path)


def write(config, workdir: str) -> epath.Path:
  """Writes `config.json` and a dated copy under `configs/`; returns the
  copy's path. Call on process 0 only, after every check passed."""
  text = config.to_json_best_effort(indent=2)
  root = epath.Path(workdir)
  history = root / HISTORY_DIR
  history.mkdir(parents=True, exist_ok=True)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y-%m-%dT%H-%M-%SZ')
  copy = history / f'config-{stamp}.json'
  n = 1
  while copy.exists():
    copy = history / f'config-{stamp}-{n}.json'
    n += 1
  _write_atomic(copy, text)
  _write_atomic(root / RECORD, text)
  return copy
