"""Training: `train_and_evaluate(config, workdir)`, one sharded jit step.

Reads top to bottom as the run happens:
  mesh -> data -> model (init shapes via jax.eval_shape) -> optimizer ->
  shardings (rules on the whole train state) -> restore / init / pretrained ->
  jit(train_step) with explicit in/out shardings and a donated state -> loop
  (progress lines, TensorBoard, eval every `eval_every`, Orbax checkpoints).

The train state is created already sharded (the init function is jitted with
`out_shardings`), so no device ever holds a full copy first. The same code
runs on 1 CPU device, 8 forced host devices under any mesh layout, and many
processes (`jax.distributed`): each process feeds its slice of the global
batch and the step sees one global `jax.Array`.

Resume: restarting with the same workdir restores step, params, optimizer
state and RNG from the newest checkpoint that verifies and loads, and the
input pipeline restarts at `start_step=step`, so N + N steps equal 2N
straight steps.

Safety: a run holds `WORKDIR/lock` (`vit_jax.training.workdir_lock`); a resume with a
config that changes the meaning of the run is refused
(`vit_jax.training.config_record`), and the config is recorded only once every check
passed; a NaN/Inf loss or gradient norm stops the run before anything more
is saved (`TrainingDiverged`); a failed save stops it with a
`train_state.CheckpointError`. All of them are one-line ValueErrors.
"""

import dataclasses
import functools
import json
import signal
import time
from typing import Any, Callable, Iterator, Optional

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import config_lib
from vit_jax.training import config_record
from vit_jax.data import dataset_info as dataset_info_lib
from vit_jax.data import device_data
from vit_jax.evaluation import evaluate
from vit_jax.training import metrics
from vit_jax.perf import hooks
from vit_jax.perf import microbatch
from vit_jax import models
from vit_jax.training import optim
from vit_jax.checkpoints import pretrained
from vit_jax.training import process_agree
from vit_jax.training import sharding
from vit_jax.checkpoints import train_state
from vit_jax.training import workdir_lock

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # int32 scalar: optimizer steps taken
  params: Any
  opt_state: Any
  rng: jax.Array        # uint32 [2]: base key, folded with the step


def input_module(dataset: str):
  """The input pipeline serving `config.data.dataset`."""
  if dataset == 'synthetic':
    from vit_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return synthetic
  if dataset.startswith('inmemory:'):
    from vit_jax.data import inmemory  # pylint: disable=g-import-not-at-top
    return inmemory
  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline


# --------------------------------------------------------------------------
# The step.


def _loss(params, model, images, targets, dropout_rng):
  """Mean softmax cross-entropy of soft `targets` [B, C]."""
  logits = model.apply({'params': params}, images, train=True,
                       rngs={'dropout': dropout_rng})
  logits = logits.astype(jnp.float32)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def _mixup(rng, images, targets, alpha: float):
  """Mixes each example with the batch rolled by one (weight ~ Beta)."""
  lam = jax.random.beta(rng, alpha, alpha)
  mix = lambda x: lam * x + (1 - lam) * jnp.roll(x, 1, axis=0)
  return mix(images), mix(targets)


def train_step(state: TrainState, batch: dict, *, model, tx, schedule,
               num_classes: int, accum_steps: int = 1,
               label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
               micro_sharding=None, parallel_microbatches: int = 1
               ) -> tuple[TrainState, dict]:
  """One optimizer step on the global batch (pure function).

  Args:
    state: the current TrainState.
    batch: 'image' [B, H, W, 3] float in [-1, 1], 'label' [B] int32.
    model, tx, schedule: the Flax module, optax transformation, lr schedule.
    num_classes: width of the one-hot targets.
    accum_steps: the batch is split into this many micro-batches whose
      gradients are averaged (same result as one big batch, less memory).
    label_smoothing, mixup_alpha: target regularizers (0 = off).
    micro_sharding: sharding of a micro-batch's leading dimension.
    parallel_microbatches: each (accumulation) micro-batch is computed as
      this many independent parts, which XLA:CPU runs side by side
      (`vit_jax.perf.microbatch`; same gradients up to summation order).

  Returns:
    (new state, {'loss', 'lr', 'grad_norm'} scalars).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  mix_rng, drop_rng = jax.random.split(rng)
  images = batch['image']
  targets = optax.smooth_labels(
      jax.nn.one_hot(batch['label'], num_classes), label_smoothing)
  if mixup_alpha > 0:
    images, targets = _mixup(mix_rng, images, targets, mixup_alpha)
  grad_fn = microbatch.mean_value_and_grad(
      lambda p, im, tg, r: _loss(p, model, im, tg, r), parallel_microbatches)

  if accum_steps == 1:
    loss, grads = grad_fn(state.params, images, targets, drop_rng)
  else:
    # Row r goes to micro-batch r % accum_steps, so every device keeps its
    # own rows (no data movement).
    def split(x):
      x = x.reshape((-1, accum_steps) + x.shape[1:]).swapaxes(0, 1)
      if micro_sharding is not None:
        x = jax.lax.with_sharding_constraint(x, micro_sharding)
      return x

    def body(carry, xs):
      loss_sum, grad_sum = carry
      im, tg, i = xs
      loss, grads = grad_fn(state.params, im, tg,
                            jax.random.fold_in(drop_rng, i))
      return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (loss, grads), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros),
        (split(images), split(targets), jnp.arange(accum_steps)))
    loss = loss / accum_steps
    grads = jax.tree.map(lambda g: g / accum_steps, grads)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, {'loss': loss, 'lr': schedule(state.step),
                     'grad_norm': optax.tree.norm(grads)}


# --------------------------------------------------------------------------
# Setup: everything a run needs, built from the config.


@dataclasses.dataclass
class Setup:
  """Mesh, data, model, optimizer and shardings of one run."""
  config: Any
  workdir: str
  mesh: jax.sharding.Mesh
  data: Any                      # config.data with pp resolved
  input: Any                     # module with the input contract
  info: Any                      # DatasetInfo
  model: Any
  tx: Any
  schedule: Callable
  abstract_state: TrainState     # ShapeDtypeStructs with shardings
  state_shardings: TrainState
  batch_sharding: Any
  replicated: Any
  init_fn: Callable              # () -> sharded fresh TrainState
  eval_step: Callable
  checkpointer: train_state.TrainCheckpointer
  # (step, reason) of the checkpoints the last restore skipped.
  skipped: list = dataclasses.field(default_factory=list)

  def eval_batches(self) -> Iterator[dict]:
    return self.input.eval_iterator(
        self.data, global_batch_size=self.config.eval_batch_size)

  def train_batches(self, start_step: int) -> Iterator[dict]:
    return self.input.train_iterator(
        self.data, global_batch_size=self.config.batch_size,
        seed=self.config.seed, start_step=start_step)

  def restore_or_init(self) -> TrainState:
    """The newest checkpoint of the workdir that verifies and loads (the
    ones skipped are in `self.skipped`), else a fresh (or pretrained)
    state. Raises train_state.CheckpointError if there are checkpoints
    but none can be restored."""
    found = self.checkpointer.restore_latest(self.abstract_state,
                                             lambda st: int(st.step))
    if found is not None:
      step, state, self.skipped = found
      metrics.log(f'resuming from {self.checkpointer.directory}/{step}')
      return state
    state = self.init_fn()
    if self.config.pretrained_path:
      state = self._load_pretrained(state)
    return state

  def _load_pretrained(self, state: TrainState) -> TrainState:
    path = self.config.pretrained_path
    metrics.log(f'initializing from {path}')
    init_host = multihost_utils.process_allgather(state.params, tiled=True)
    size = (self.config.image_size, self.config.image_size)
    params = pretrained.fit(self.model, init_host, pretrained.read(path),
                            size)
    params = jax.tree.map(
        lambda x, s: jax.make_array_from_callback(
            x.shape, s, lambda idx, x=x: np.asarray(x)[idx]),
        params, self.state_shardings.params)
    opt_state = jax.jit(self.tx.init,
                        out_shardings=self.state_shardings.opt_state)(params)
    return state.replace(params=params, opt_state=opt_state)


def build_model(config, num_classes: int, devices=None):
  """The model of `config` with the computation hooks `config.perf` asks for
  on `devices` (default: all; `vit_jax.perf.hooks.model_overrides`)."""
  devices = jax.devices() if devices is None else list(devices)
  overrides = dict(config.model)
  if config.dtype != 'float32':
    overrides['dtype'] = DTYPES[config.dtype]
  overrides.update(hooks.model_overrides(
      config.perf, devices[0].platform, len(devices), config.model_name))
  return models.get_model(config.model_name, num_classes=num_classes,
                          **overrides)


def setup(config, workdir: str, devices=None) -> Setup:
  """Builds a run's mesh, data, model, optimizer, shardings, jitted fns.

  `devices` defaults to all devices (of all processes).
  """
  # Mesh.
  devices = jax.devices() if devices is None else devices
  config_lib.validate(config, len(devices))
  mesh = sharding.make_mesh(config.mesh, devices)
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)

  # Data.
  data = config_lib.local_data_config(config)
  inp = input_module(data.dataset)
  info = inp.dataset_info(data)
  dataset_info_lib.save_class_names(workdir, info.class_names)

  # Model: shapes only, nothing is allocated yet.
  model = build_model(config, info.num_classes, devices)
  tx, schedule = optim.make(config.optim, total_steps=config.total_steps,
                            warmup_steps=config.warmup_steps)
  shape = (1, config.image_size, config.image_size, 3)

  def init_state(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = model.init(params_rng, jnp.zeros(shape, jnp.float32))['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=state_rng)

  rng = jax.random.PRNGKey(config.seed)
  shapes = jax.eval_shape(init_state, rng)

  # Shardings: partition rules applied to the whole state by path.
  state_shardings = sharding.tree_shardings(shapes, mesh,
                                            config.partition_rules)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes, state_shardings)
  init_fn = functools.partial(
      jax.jit(init_state, out_shardings=state_shardings), rng)

  eval_step = evaluate.make_eval_step(
      model, state_shardings.params, batch_sharding, replicated,
      hooks.microbatches(config.perf, 'infer', config.eval_batch_size,
                         list(mesh.devices.flat), config.image_size))
  checkpointer = train_state.TrainCheckpointer(
      workdir, save_every=config.checkpoint_every,
      keep=config.keep_checkpoints, use_async=config.async_checkpoints)
  return Setup(config, workdir, mesh, data, inp, info, model, tx, schedule,
               abstract_state, state_shardings, batch_sharding, replicated,
               init_fn, eval_step, checkpointer)


def make_train_step(s: Setup) -> Callable:
  """jit(train_step): explicit shardings, the state donated."""
  c = s.config
  micro = jax.sharding.NamedSharding(
      s.mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))
  step = functools.partial(
      train_step, model=s.model, tx=s.tx, schedule=s.schedule,
      num_classes=s.info.num_classes, accum_steps=c.accum_steps,
      label_smoothing=c.label_smoothing, mixup_alpha=c.mixup_alpha,
      micro_sharding=micro,
      parallel_microbatches=hooks.microbatches(
          c.perf, 'train', c.batch_size // c.accum_steps,
          list(s.mesh.devices.flat), c.image_size))
  return jax.jit(step, in_shardings=(s.state_shardings, s.batch_sharding),
                 out_shardings=(s.state_shardings, s.replicated),
                 donate_argnums=0)


class _StopFlag:
  """Preemption (SIGTERM to any process): every process saves the same step
  and returns.

  `should_stop(step)` is called after every step, by every process.
    With `jax.distributed` initialized (any number of processes) and JAX's
      preemption service on (`jax_enable_preemption_service`, the default):
      `jax.distributed.initialize` installed the service's SIGTERM notifier
      on every process; a notice on any process reaches all of them through
      the coordination service, and
      `multihost_utils.reached_preemption_sync_point(step)` turns true on
      every process at the same step (the largest step any process had
      reached when it heard, plus one). Until a notice arrives the call is
      a local check, no communication.
    One process without `jax.distributed`: a Python SIGTERM handler sets a
      flag, seen after the current step.
    Several processes without the service: the Python handler sets a local
      flag and the processes agree every `every` steps
      (`process_agree.any_process`, one small collective).
  """

  def __init__(self, every: int):
    self._every = max(int(every), 1)
    self._local = False
    self._previous = None
    self._service = (jax.distributed.is_initialized()
                     and jax.config.jax_enable_preemption_service)
    if not self._service:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # not the main thread
        pass

  def _handler(self, *_):
    self._local = True

  def should_stop(self, step: int) -> bool:
    """Whether the run stops (and saves) after `step`: the same answer on
    every process. Must be called at every step, by every process."""
    if self._service:
      return multihost_utils.reached_preemption_sync_point(step)
    if jax.process_count() == 1:
      return self._local
    return step % self._every == 0 and process_agree.any_process(self._local)

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class TrainingDiverged(ValueError):
  """The loss or gradient norm became NaN or Inf (one-line message)."""


class _FiniteWatch:
  """Remembers, on device, the first step whose loss or gradient norm is not
  finite; `raise_if_bad` reads it back (one small transfer), so the loop
  needs no per-step host sync."""

  def __init__(self, s: Setup):
    self._s = s
    self._first = jax.device_put(
        (jnp.int32(-1), jnp.float32(0), jnp.float32(0)), s.replicated)

    def update(first, step, loss, grad_norm):
      bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
      new = (first[0] < 0) & bad
      return (jnp.where(new, step, first[0]),
              jnp.where(new, loss.astype(jnp.float32), first[1]),
              jnp.where(new, grad_norm.astype(jnp.float32), first[2]))

    self._update = jax.jit(update, out_shardings=s.replicated)

  def update(self, step: int, m: dict) -> None:
    self._first = self._update(self._first, jnp.int32(step), m['loss'],
                               m['grad_norm'])

  def message(self) -> Optional[str]:
    step, loss, grad_norm = (v.item() for v in jax.device_get(self._first))
    if step < 0:
      return None
    last = self._s.checkpointer.latest_step()
    lr = float(self._s.schedule(step - 1))
    return (f'training diverged: loss {loss} (grad_norm {grad_norm}, lr '
            f'{lr:.3g}) at step {step}; stopped before saving it (last '
            f'checkpoint: {"none" if last is None else f"step {last}"}); '
            f'lower config.optim.base_lr={self._s.config.optim.base_lr}')

  def raise_if_bad(self) -> None:
    msg = self.message()
    if msg:
      raise TrainingDiverged(msg)


def _check_resume(s: Setup) -> None:
  """Refuses (one-line ValueError) a resume whose config changes the meaning
  of the recorded run; prints the changes that are allowed."""
  if not s.checkpointer.all_steps():
    return

  def check() -> str:
    recorded = config_record.read(s.workdir)
    if recorded is None:
      return (f'warning: {s.workdir}/{config_record.RECORD} is missing: '
              'resuming without checking the config against the run\'s')
    return '\n'.join(config_record.check_resume(s.config, recorded,
                                                s.workdir))

  for line in filter(None, process_agree.from_process_0(check).split('\n')):
    metrics.log(line)


def _check_total_steps(s: Setup, start: int) -> None:
  c = s.config
  if start and c.total_steps < start:
    raise ValueError(
        f'config.total_steps={c.total_steps} is below step {start} of the '
        f'checkpoint being resumed ({s.checkpointer.directory}/{start})')
  recorded = process_agree.from_process_0(lambda: str(
      (config_record.read(s.workdir) or {}).get('total_steps', '')))
  if start and recorded and int(recorded) != c.total_steps:
    old = optim.make(c.optim, total_steps=int(recorded),
                     warmup_steps=c.warmup_steps)[1]
    metrics.log(
        f'config.total_steps {recorded} -> {c.total_steps} on resume: the lr '
        f'schedule now spans {c.total_steps} steps (lr at step {start + 1}: '
        f'{float(s.schedule(start)):.3g}, {float(old(start)):.3g} under the '
        'recorded total)')


def _check_batch(batch: dict, config, local_batch: int) -> None:
  want = (local_batch, config.image_size, config.image_size, 3)
  got = tuple(batch['image'].shape)
  if got != want:
    raise ValueError(
        f'input batch has shape {got}, expected {want}: make '
        f'config.data.pp_train produce config.image_size={config.image_size}')


def train_and_evaluate(config, workdir: str, *, devices=None,
                       stop_after: Optional[int] = None) -> dict[str, Any]:
  """Trains `config.total_steps` steps, evaluating and checkpointing.

  Holds the workdir's lock for the whole run (`vit_jax.training.workdir_lock`).

  Args:
    config: the experiment config (see configs/common.py).
    workdir: checkpoints, TensorBoard events and config.json go here; an
      existing checkpoint there is resumed (after the config check of
      `vit_jax.training.config_record`).
    devices: the devices of the mesh (default: all).
    stop_after: stop (with a checkpoint) after this many steps of *this*
      invocation, as if preempted; for tests of resume.

  Returns:
    {'step', 'train_losses': {step: loss}, 'eval': last eval metrics,
    'state'}.

  Raises:
    ValueError (one line): a bad config, a workdir in use or unusable, a
      refused resume, no restorable checkpoint, a failed save
      (train_state.CheckpointError), a diverged loss (TrainingDiverged).
  """
  with workdir_lock.WorkdirLock(workdir):
    return _train(config, workdir, devices, stop_after)


def _train(config, workdir: str, devices, stop_after: Optional[int]
           ) -> dict[str, Any]:
  s = setup(config, workdir, devices)
  try:
    return _run(s, stop_after)
  except BaseException:
    s.checkpointer.close_quietly()
    raise


def _run(s: Setup, stop_after: Optional[int]) -> dict[str, Any]:
  config, workdir = s.config, s.workdir
  metrics.log(f'mesh {dict(s.mesh.shape)} on {s.mesh.size} devices, '
              f'{jax.process_count()} processes; model {config.model_name}; '
              f'{s.info.num_train} train / {s.info.num_eval} eval examples, '
              f'{s.info.num_classes} classes')
  _check_resume(s)
  state = s.restore_or_init()
  start = int(state.step)
  _check_total_steps(s, start)
  if start and start >= config.total_steps:
    return _finished(s, state, start)
  # Every check passed: the workdir becomes this run's.
  s.checkpointer.move_aside([step for step, _ in s.skipped])
  s.checkpointer.remove_unfinished()
  if jax.process_index() == 0:
    config_record.write(config, workdir)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  metrics.log(f'{n_params:,} parameters')
  step_fn = make_train_step(s)
  writer = metrics.MetricWriter(workdir)
  progress = metrics.Progress(config.total_steps, config.batch_size, start)
  stop = _StopFlag(config.log_every)
  watch = _FiniteWatch(s)
  local_batch = config.batch_size // jax.process_count()

  def host_batches():
    for i, b in enumerate(s.train_batches(start)):
      if i == 0:
        _check_batch(b, config, local_batch)
      yield b

  def save(step, state):
    watch.raise_if_bad()  # never checkpoint a diverged state
    s.checkpointer.save(step, state, force=True)

  batches = device_data.prefetch(host_batches(), s.batch_sharding,
                                 config.data.prefetch)
  losses, last_eval = {}, {}
  step = start
  if config.eval_at_start and start == 0:
    last_eval = _eval(s, state, 0, writer)
    progress.update(0)
  try:
    while step < config.total_steps:
      state, m = step_fn(state, next(batches))
      step += 1
      if step == start + 1:  # compiled and run once: time from here on
        jax.block_until_ready(m['loss'])
        progress.restart(step)
      watch.update(step, m)
      s.checkpointer.check()  # a failed background save stops the run now
      if step % config.log_every == 0 or step == config.total_steps:
        watch.raise_if_bad()
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        losses[step] = m['loss']
        p = progress.update(step)
        speed = (f'{p["img_per_sec"]:.1f} img/s ETA '
                 f'{metrics.fmt_duration(p["eta_sec"])}' if p else
                 f'(first step, with compilation: '
                 f'{progress.compile_sec:.1f}s)')
        metrics.log(
            f'step {step}/{config.total_steps} loss {m["loss"]:.4f} '
            f'lr {m["lr"]:.5f} grad_norm {m["grad_norm"]:.3f} {speed}')
        writer.write(step, {**m, **({'img_per_sec': p['img_per_sec']}
                                    if p else {})}, 'train/')
      if (config.eval_every and step % config.eval_every == 0
          or step == config.total_steps):
        watch.raise_if_bad()
        last_eval = _eval(s, state, step, writer)
        progress.update(step)  # img/s counts training time only
      if (config.checkpoint_every and step % config.checkpoint_every == 0
          or step == config.total_steps):
        save(step, state)
      if (stop.should_stop(step)
          or stop_after is not None and step - start >= stop_after):
        if jax.process_count() > 1:  # every process says it (its own log)
          print(f'process {jax.process_index()}/{jax.process_count()}: '
                f'stopping at step {step}: saving a checkpoint', flush=True)
        else:
          metrics.log(f'stopping at step {step}: saving a checkpoint')
        if s.checkpointer.latest_step() != step:
          save(step, state)
        break
  except KeyboardInterrupt:
    if (jax.process_count() == 1 and step > start
        and s.checkpointer.latest_step() != step
        and watch.message() is None):
      metrics.log(f'interrupted at step {step}: saving a checkpoint')
      s.checkpointer.save(step, state, force=True)
      s.checkpointer.wait()
    raise
  finally:
    stop.restore()
    writer.close()
  s.checkpointer.close()
  _log_outputs(s)
  return {'step': step, 'train_losses': losses, 'eval': last_eval,
          'state': state}


def _finished(s: Setup, state: TrainState, step: int) -> dict[str, Any]:
  """A rerun of a run that reached config.total_steps: says so, with the
  final eval its TensorBoard events hold; writes nothing."""
  last = json.loads(process_agree.from_process_0(lambda: json.dumps(
      metrics.last_scalars(s.workdir, 'eval/'))))
  if last is None:
    result = f'no eval recorded in {s.workdir}/{metrics.TENSORBOARD_DIR}'
  else:
    result = (f'final eval (step {last["step"]}): ' + ' '.join(
        f'{k} {last[k]:.4f}' for k in ('top1', 'top5', 'loss') if k in last))
  metrics.log(f'run already finished: step {step}/{s.config.total_steps} '
              f'({s.checkpointer.directory}/{step}); {result}; nothing to do '
              '(raise config.total_steps to train longer)')
  s.checkpointer.close()
  _log_outputs(s)
  return {'step': step, 'train_losses': {}, 'eval': last or {},
          'state': state}


def _log_outputs(s: Setup) -> None:
  """The last line of a run: where its checkpoints and events are."""
  steps = s.checkpointer.all_steps()
  metrics.log(f'checkpoints: {s.checkpointer.directory} (steps '
              f'{", ".join(map(str, steps)) if steps else "none"}); '
              f'TensorBoard events: {s.workdir}/{metrics.TENSORBOARD_DIR}')


def evaluate_checkpoint(config, workdir: str) -> dict[str, float]:
  """Evaluates the workdir's latest checkpoint or `config.pretrained_path`."""
  s = setup(config, workdir)
  if s.checkpointer.latest_step() is None and not config.pretrained_path:
    raise ValueError(f'nothing to evaluate: no checkpoint in {workdir}/'
                     'checkpoints and config.pretrained_path is not set')
  state = s.restore_or_init()
  result = evaluate.evaluate(s.eval_step, state.params, s.eval_batches(),
                             s.batch_sharding, config.data.prefetch)
  metrics.log(f'evaluate step {int(state.step)}: top1={result["top1"]:.4f} '
              f'top5={result["top5"]:.4f} loss={result["loss"]:.4f} '
              f'on {int(result["count"])} images')
  return result


def _eval(s: Setup, state: TrainState, step: int, writer) -> dict:
  t0 = time.perf_counter()
  result = evaluate.evaluate(s.eval_step, state.params, s.eval_batches(),
                             s.batch_sharding, s.config.data.prefetch)
  metrics.log(f'eval step {step}: top1 {result["top1"]:.4f} top5 '
              f'{result["top5"]:.4f} loss {result["loss"]:.4f} '
              f'({int(result["count"])} images, '
              f'{time.perf_counter() - t0:.1f}s)')
  writer.write(step, {k: result[k] for k in ('top1', 'top5', 'loss')},
               'eval/')
  return result
