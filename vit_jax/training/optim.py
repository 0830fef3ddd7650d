"""Optimizers and learning-rate schedules (optax), built from `config.optim`.

    tx, schedule = optim.make(config.optim, total_steps=..., warmup_steps=...)

Optimizers:
  `sgd`    SGD with momentum (fine-tuning default); `momentum_dtype` may be
           'bfloat16' to halve the accumulator memory, as the official code.
  `adamw`  Adam with decoupled weight decay (pre-training, AugReg recipe).
Both: optional global-norm clipping (`grad_clip_norm`, 0 = off) first, and
weight decay only on kernels (Dense/Conv weights): biases, norm scales,
position embeddings, the class token and the MAP probe are not decayed.

Schedules (`schedule`): linear warmup from 0 over `warmup_steps` to `base_lr`,
then `cosine` (to `end_lr`), `linear` (to `end_lr`), `constant`, or `rsqrt`
(base_lr * sqrt(warmup / step), `timescale` = warmup steps or 10k if none).
"""

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('cosine', 'linear', 'constant', 'rsqrt')
MOMENTUM_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def make_schedule(name: str, *, base_lr: float, total_steps: int,
                  warmup_steps: int = 0, end_lr: float = 0.0):
  """A function step -> learning rate (a jnp scalar), see module docstring."""
  if name not in SCHEDULES:
    raise ValueError(f'config.optim.schedule={name!r}; allowed: '
                     f'{", ".join(SCHEDULES)}')
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f'config.warmup_steps={warmup_steps} must be in '
                     f'[0, total_steps={total_steps}]')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1) / max(warmup_steps, 1))
    decay_len = max(total_steps - warmup_steps, 1)
    frac = jnp.clip((step - warmup_steps) / decay_len, 0.0, 1.0)
    if name == 'cosine':
      lr = end_lr + (base_lr - end_lr) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
    elif name == 'linear':
      lr = base_lr + (end_lr - base_lr) * frac
    elif name == 'constant':
      lr = jnp.asarray(base_lr, jnp.float32)
    else:  # rsqrt
      timescale = warmup_steps or 10_000
      lr = base_lr * jnp.sqrt(timescale / jnp.maximum(step + 1, timescale))
    if warmup_steps:
      lr = jnp.where(step < warmup_steps, base_lr * warm, lr)
    return lr

  return schedule


def decay_mask(params):
  """True for leaves that get weight decay: kernels of Dense/Conv layers."""
  def is_kernel(path, _):
    return getattr(path[-1], 'key', None) == 'kernel'
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make(optim_config, *, total_steps: int, warmup_steps: int):
  """(optax GradientTransformation, schedule) from `config.optim`.

  Keys of `optim_config`: name, base_lr, end_lr, schedule, weight_decay,
  grad_clip_norm, momentum, momentum_dtype, nesterov (sgd), b1, b2, eps
  (adamw).
  """
  c = optim_config
  schedule = make_schedule(c.schedule, base_lr=c.base_lr,
                           total_steps=total_steps,
                           warmup_steps=warmup_steps, end_lr=c.end_lr)
  parts = []
  if c.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
  if c.name == 'sgd':
    if c.momentum_dtype not in MOMENTUM_DTYPES:
      raise ValueError(f'config.optim.momentum_dtype={c.momentum_dtype!r}; '
                       f'allowed: {", ".join(MOMENTUM_DTYPES)}')
    if c.weight_decay:
      parts.append(optax.add_decayed_weights(c.weight_decay, decay_mask))
    parts.append(optax.sgd(
        schedule, momentum=c.momentum or None, nesterov=c.nesterov,
        accumulator_dtype=MOMENTUM_DTYPES[c.momentum_dtype]))
  elif c.name == 'adamw':
    parts.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps,
                             weight_decay=c.weight_decay, mask=decay_mask))
  else:
    raise ValueError(f'config.optim.name={c.name!r}; allowed: '
                     f'{", ".join(OPTIMIZERS)}')
  return optax.chain(*parts), schedule
