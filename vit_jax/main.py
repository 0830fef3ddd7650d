"""Entry point: `python -m vit_jax.main --config=configs/vit.py:b16,cifar10
--workdir=DIR [--config.KEY=VALUE ...]` (`--help` lists the presets).

`--config=configs/X.py:ARG` names a file relative to the working directory,
else the `configs/` this vit_jax came with (`vit_jax.config_lib`), so the
README commands run from any directory once the package is installed.

With `--distributed` the process joins a multi-process job through
`jax.distributed.initialize` (coordinator, process count and id from
`--coordinator_address`, `--num_processes`, `--process_id`, as
`launch/local.sh` and `launch/slurm.sbatch` pass them, or detected by JAX on
TPU pods and SLURM), then dispatches on `config.trainer`:
  train           vit_jax.training.train.train_and_evaluate(config, workdir)
  evaluate        vit_jax.training.train.evaluate_checkpoint(config, workdir)
  inference_time  vit_jax.perf.inference_time.run(config, workdir)

Every failure ends with one line `error: ...` on stderr and exit status 1
(no traceback): the errors a user can cause (a bad config, a workdir in use
or unusable, a refused resume, no restorable checkpoint, a full disk, a
diverged loss) name what to change; anything else is shown as its type and
first line. Tracebacks that libraries log for errors they pass on to us are
dropped too. `--verbosity=...` (any value) keeps them and re-raises
unexpected errors with their traceback.
"""

import logging as pylogging
import os
import re
import sys
import tempfile
import textwrap
import warnings

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'config file and argument, e.g. configs/vit.py:b16,cifar10 '
    '(the file relative to the working directory, else the installed '
    'configs/); then --config.KEY=VALUE overrides any key',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'checkpoints, TensorBoard events and '
                    'config.json go here; a rerun with the same --workdir '
                    'resumes from its latest checkpoint')
flags.DEFINE_bool('distributed', False, 'join a multi-process job: call '
                  'jax.distributed.initialize (JAX detects the coordinator, '
                  'process count and id on TPU pods and SLURM, unless the '
                  'three flags below give them)')
flags.DEFINE_string('coordinator_address', None, 'with --distributed: '
                    'HOST:PORT of process 0')
flags.DEFINE_integer('num_processes', None, 'with --distributed: how many '
                     'processes the job has')
flags.DEFINE_integer('process_id', None, 'with --distributed: this '
                     "process's index, 0 .. num_processes - 1")
# Our flags, in the order --help lists them (absl adds --verbosity & co.).
_FLAGS = ('config', 'workdir', 'distributed', 'coordinator_address',
          'num_processes', 'process_id')
_PROCESS_FLAGS = ('coordinator_address', 'num_processes', 'process_id')


def init_distributed() -> None:
  """Joins the process group of `--distributed` (nothing without it)."""
  given = {k: FLAGS[k].value for k in _PROCESS_FLAGS
           if FLAGS[k].value is not None}
  if not FLAGS.distributed:
    if given:
      raise ValueError(f'--{next(iter(given))} needs --distributed')
    return
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_platforms == 'cpu':  # JAX_PLATFORMS=cpu
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**given)


def set_allocator(config) -> None:
  """`config.perf.host_malloc` (`vit_jax.perf.host_malloc`), before jax
  starts its threads."""
  from vit_jax.perf import host_malloc  # pylint: disable=g-import-not-at-top
  perf = config.get('perf') or {}
  host_malloc.apply(perf.get('host_malloc', 'auto'))


def run(config, workdir: str):
  """Dispatches on `config.trainer` (imports are lazy)."""
  # pylint: disable=g-import-not-at-top
  from vit_jax import config_lib
  if config.trainer not in config_lib.TRAINERS:
    raise ValueError(f'config.trainer={config.trainer!r}; allowed: '
                     f'{", ".join(config_lib.TRAINERS)}')
  if config.trainer == 'train':
    from vit_jax.training import train
    return train.train_and_evaluate(config, workdir)
  if config.trainer == 'evaluate':
    from vit_jax.training import train
    return train.evaluate_checkpoint(config, workdir)
  from vit_jax.perf import inference_time
  return inference_time.run(config, workdir)


# --------------------------------------------------------------------------
# Command line: --help, the config file, one-line flag errors.

_USAGE = """\
usage: python -m vit_jax.main --config=FILE[:ARG] --workdir=DIR
           [--config.KEY=VALUE ...] [--distributed [--coordinator_address=
           HOST:PORT --num_processes=N --process_id=I]] [--verbosity=1]

Trains a model (config.trainer=train), evaluates a workdir or checkpoint
(--config.trainer=evaluate) or times a model (configs/inference_time.py).
Rerunning a command with the same --workdir resumes it; a finished run says
so and prints its final eval."""

_EXAMPLES = """\
examples:
  python -m vit_jax.main --config=configs/cpu.py:digits --workdir=/tmp/digits
  python -m vit_jax.main --config=configs/vit.py:b16,cifar10 \\
      --config.pretrained_path=ViT-B_16.npz --workdir=/tmp/b16_c10
  python -m vit_jax.main --config=configs/vit.py:ti16,cifar10,res=128 \\
      --config.data.dataset=folder:/path/to/jpegs --workdir=/tmp/ft"""


def _wrap(text: str, indent: str = '  ', hang: str = '  ') -> str:
  return textwrap.fill(text, 79, initial_indent=indent,
                       subsequent_indent=indent + hang,
                       break_on_hyphens=False, break_long_words=False)


def usage() -> str:
  """The text of `--help`: usage, the config files and their presets (read
  from the configs/ that `--config=configs/...` resolves to), the flags."""
  from vit_jax import config_lib  # pylint: disable=g-import-not-at-top
  out = [_USAGE, '']
  where = config_lib.CONFIGS_DIR
  out.append(_wrap(
      'config files (FILE[:ARG]; configs/NAME.py is looked up in the working '
      f'directory, then in {where}):', '', ''))
  files = config_lib.config_files()
  first = [f'configs/{n}.py' for n in ('vit', 'mixer', 'pretrain', 'cpu')]
  for name in [f for f in first if f in files] + [
      f for f in files if f not in first]:
    module = config_lib.import_config(name[len('configs/'):-len('.py')])
    arg = getattr(module, 'ARGUMENT', 'ARG')
    doc = (module.__doc__ or '').strip().splitlines()[0]
    out.append(f'  {name}:{arg}')
    out.append(_wrap(doc.split(':')[0].rstrip('.'), '      '))
  common = config_lib.import_config('common')
  cpu = config_lib.import_config('cpu')
  out += ['', 'MODEL,DATASET[,res=N,steps=N,batch=N,lr=X] (presets of '
          'configs/common.py, each part optional):']
  out.append(_wrap('MODEL: ' + ', '.join(
      f'{k} ({name})' for k, (name, _) in common.MODELS.items())))
  out.append(_wrap('DATASET: ' + ', '.join(
      f'{k} ({d["data"]["dataset"]}, {d["total_steps"]} steps)'
      for k, d in common.DATASETS.items())))
  out.append(_wrap(', '.join(f'{k}=... sets config.{v}'
                             for k, v in config_lib.SHORTHANDS.items())))
  out.append(_wrap('EXPERIMENT of configs/cpu.py: ' +
                   ', '.join(cpu.EXPERIMENTS)))
  sizes = config_lib.RELEASED_PATCH_SIZES + config_lib.PRESET_PATCH_SIZES
  out.append(_wrap(
      'Any registry name also works as --config.model_name=NAME (ViT-B_16, '
      'B/16, R50+B/16, R26+S/32, Mixer-B_16, BiT-R50, ...: vit_jax.models); '
      f'patch sizes {", ".join(map(str, sorted(sizes)))} only, unless '
      f'--config.{config_lib.ALLOW_CUSTOM_KEY}=True.', '', ''))
  out += ['', 'flags:']
  for name in _FLAGS:
    out.append(_wrap(f'--{name}: {FLAGS[name].help}'))
  out.append(_wrap('--verbosity=N: keep library logs and show tracebacks '
                   '(any value)'))
  out += ['', _EXAMPLES]
  return '\n'.join(out)


def _resolve_config_arg(argv: list[str]) -> list[str]:
  """argv with the file of `--config=FILE[:ARG]` (or `--config FILE...`)
  resolved (`config_lib.resolve_config_file`), and `configs` importable
  as that file's package."""
  from vit_jax import config_lib  # pylint: disable=g-import-not-at-top
  argv = list(argv)
  for i, a in enumerate(argv):
    if a.startswith(('--config=', '-config=')):
      flag, spec = a.split('=', 1)
      spec = config_lib.resolve_config_file(spec)
      argv[i] = f'{flag}={spec}'
    elif a in ('--config', '-config') and i + 1 < len(argv):
      spec = argv[i + 1] = config_lib.resolve_config_file(argv[i + 1])
    else:
      continue
    config_lib.use_configs_package(spec.split(':', 1)[0])
  return argv


def _unknown_override(argv) -> str:
  """Names the first `--config.KEY` of argv that the config lacks."""
  from vit_jax import config_lib  # pylint: disable=g-import-not-at-top
  spec = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')][-1]
  path, _, arg = spec.partition(':')
  module = config_lib.load_config_module(path)
  config = module.get_config(arg) if arg else module.get_config()
  for a in argv:
    if not a.startswith('--config.'):
      continue
    key = a[len('--config.'):].split('=', 1)[0]
    node, path = config, []
    for part in key.split('.'):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in keys:
        where = '.'.join(['config'] + path)
        return (f'unknown config key {"config." + key!r}: {where} has no '
                f'{part!r}; allowed: {", ".join(sorted(keys))}')
      node, path = node[part], path + [part]
  return ''


def parse_flags(argv):
  """absl flag parsing: `--help` prints `usage()`; a bad flag or config is
  a one-line error (exit status 2)."""
  if any(a in ('-h', '--help', '-help', '-?') for a in argv[1:]):
    print(usage())
    sys.exit(0)
  try:
    argv = _resolve_config_arg(argv)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    msg = ''
    try:
      msg = _unknown_override(argv)
    except Exception:  # pylint: disable=broad-except
      pass
    if not msg:
      msg = str(e).strip().splitlines()[-1].strip()
      msg = msg.split('ValueError: ', 1)[-1]
    print(f'error: {msg}', file=sys.stderr)
    sys.exit(2)


# --------------------------------------------------------------------------
# Logs.

class _NoLoggedTracebacks(pylogging.Filter):
  """Drops log records that carry a traceback (Orbax logs the exceptions of
  its background threads before raising them again in ours)."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return not record.exc_info


# The prefix of an absl/glog C++ log line: level, date, time, thread id.
_CPP_LOG_PREFIX = re.compile(r'^[IWEF]\d{4} [\d:.]+\s+\d+ ')


def needs_tensorflow(config, workdir: str) -> bool:
  """Whether the run loads TensorFlow: the tf.data input pipelines
  (`vit_jax.data.input_pipeline`) and bucket paths (`gs://`, tf.io.gfile)
  do; the synthetic and in-memory datasets on local paths do not."""
  dataset = config.data.dataset
  local_data = dataset == 'synthetic' or dataset.startswith('inmemory:')
  paths = (workdir, config.get('pretrained_path') or '')
  return not local_data or any('://' in p for p in paths)


def import_tensorflow() -> None:
  """Imports TensorFlow, each line it logs while loading printed once.

  TensorFlow's wheel links its logging code into two libraries that
  `import tensorflow` loads (libtensorflow_framework.so and the profiler
  plugin `_pywrap_profiler_plugin.so` of the eagerly imported
  `tf.profiler.experimental.client`); each logs the same notes (oneDNN, CPU
  features) when it is loaded, before absl logging is initialized, so
  TF_CPP_MIN_LOG_LEVEL does not apply and every line came twice. The load
  happens once per process: its stderr is held back, then written without
  the repeats (the same message with another timestamp).
  """
  if 'tensorflow' in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      pass  # the modules that need it say so
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      text = held.read().decode(errors='replace')
  seen = set()
  for line in text.splitlines(keepends=True):
    key = _CPP_LOG_PREFIX.sub('', line)
    if key not in seen:
      seen.add(key)
      sys.stderr.write(line)
  sys.stderr.flush()


def error_line(e: BaseException) -> str:
  """`error: ...`, one line: the message of a ValueError (the errors a user
  can cause), else the exception's type and the first line of its message."""
  text = str(e).strip()
  lines = text.splitlines() or ['']
  first = lines[0] + (' [...]' if len(lines) > 1 else '')
  if not isinstance(e, ValueError):
    first = f'{type(e).__name__}: {first}' if first else type(e).__name__
  return f'error: {first}'


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError('--config and --workdir are required (see --help)')
  verbose = FLAGS['verbosity'].present
  if not verbose:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO
    logging.get_absl_handler().addFilter(_NoLoggedTracebacks())
    # Leftovers of a failed asynchronous save (asyncio callbacks on closed
    # loops) are reported as unraisable at exit; the error line said it all.
    sys.unraisablehook = lambda unraisable: None
    warnings.filterwarnings('ignore', message='coroutine .* was never awaited',
                            category=RuntimeWarning)
  try:
    config = FLAGS.config
    training = config.trainer in ('train', 'evaluate')
    if training:
      from vit_jax import config_lib  # pylint: disable=g-import-not-at-top
      config_lib.validate(config)  # before anything slow
    set_allocator(config)
    init_distributed()
    if training and needs_tensorflow(config, FLAGS.workdir):
      import_tensorflow()
    run(config, FLAGS.workdir)
  except KeyboardInterrupt:
    print('error: interrupted', file=sys.stderr)
    return 130
  except ValueError as e:  # the errors a user can cause: one line
    print(error_line(e), file=sys.stderr)
    return 1
  except Exception as e:  # pylint: disable=broad-except
    if verbose:
      raise
    print(error_line(e) + ' (rerun with --verbosity=-1 for the traceback)',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
