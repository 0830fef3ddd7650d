"""Entry point: `python -m vit_jax.main --config=configs/vit.py:b16,cifar10
--workdir=DIR [--config.KEY=VALUE ...]`.

Initializes `jax.distributed` when launched as one of several processes
(env `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, as set
by `launch/local.sh`; or `VIT_JAX_DISTRIBUTED=1` for auto-detection on TPU
pods and SLURM), then dispatches on `config.trainer`:
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

import importlib.util
import logging as pylogging
import os
import sys
import warnings

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Config file and argument, e.g. configs/vit.py:b16,cifar10',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard, config.json.')


def init_distributed() -> None:
  """Joins the process group described by the environment, if any."""
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    if os.environ.get('JAX_PLATFORMS', '') == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
  elif os.environ.get('VIT_JAX_DISTRIBUTED') == '1':
    jax.distributed.initialize()


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


def _unknown_override(argv) -> str:
  """Names the first `--config.KEY` of argv that the config lacks."""
  spec = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')][-1]
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
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
  """absl flag parsing; a bad config flag is a one-line error."""
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


class _NoLoggedTracebacks(pylogging.Filter):
  """Drops log records that carry a traceback (Orbax logs the exceptions of
  its background threads before raising them again in ours)."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return not record.exc_info


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
    raise app.UsageError('--config and --workdir are required')
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
    set_allocator(FLAGS.config)
    init_distributed()
    run(FLAGS.config, FLAGS.workdir)
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
