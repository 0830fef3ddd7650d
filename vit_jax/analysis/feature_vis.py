"""Feature visualization by activation maximization (Ghiasi et al. 2022).

Starting from uniform noise, an image in [0, 1] is optimized with Adam so
that one feature of the network is as large as possible, through a batch of
randomly augmented copies of it (augmentation ensembling) and with a total
variation penalty. Many features are optimized at once (one image each, in
one jitted step); the network is cut after the feature's block.

A feature is (kind, layer, index):
  'mlp'                   unit `index` of the GELU output inside block
                          `layer`'s MLP (ViT; 4·D units), the paper's default;
  'block'                 channel `index` of block `layer`'s output tokens
                          (ViT and Mixer);
  'query'/'key'/'value'   channel `index` (head-major, D channels) of the
                          attention projections of block `layer` (ViT).
Its activation is the mean over the patch tokens (class token excluded).

The recipe (`Recipe` defaults) is the authors' (hamidkazemi22/
vit-visualization, `experiments/it15/vis35.py`): Adam lr 0.1, betas
(0.5, 0.99), eps 1e-8, cosine decay to 0 over 400 steps; 8 augmented copies
per step: colour jitter x -> (x - m) / exp(s) with m, s uniform in [-1, 1]
per copy and channel, a per-copy-and-channel Gaussian colour offset of scale
0.5 decaying linearly to 0, a random roll by up to 32 px; pixels clipped to
[0, 1] after each step; the image is fed to the model as 2x - 1.
Total variation: sum over the horizontal, vertical and both diagonal
neighbour differences of their L2 norm per image and channel, averaged. The
authors weight it 0.0005 * tv (tv = 0.1 in their README) against a feature
term that their loss divides by the 8 copies (a `.diag().mean()` quirk); we
keep the feature term as a plain mean and put that factor into the default
`tv_weight` = 8 * 0.0005 * 0.1 = 4e-4, the same balance.
"""

import dataclasses
import sys
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax.analysis import modelinfo
from vit_jax.analysis import validate
from vit_jax.models import intermediates

KINDS = ('mlp', 'block', 'query', 'key', 'value')
PyTree = Any


@dataclasses.dataclass(frozen=True)
class Feature:
  """One feature: kind (module doc), block index, channel/unit index."""
  kind: str
  layer: int
  index: int

  def name(self) -> str:
    return f'{self.kind}_L{self.layer}_u{self.index}'


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Optimization and augmentation hyperparameters (module doc)."""
  steps: int = 400
  lr: float = 0.1
  b1: float = 0.5
  b2: float = 0.99
  eps: float = 1e-8
  copies: int = 8          # augmented copies per image and step
  jitter: int = 32         # max roll in pixels, each direction
  color_shift: float = 1.0  # m ~ U[-color_shift, color_shift]
  color_scale: float = 1.0  # s ~ U[-color_scale, color_scale]
  noise: float = 0.5       # colour offset scale at step 0, linear to 0
  flip: float = 0.0        # probability of a horizontal flip per copy
  tv_weight: float = 4e-4
  seed: int = 0


def num_units(model, kind: str) -> int:
  """How many features of `kind` each block of `model` has."""
  validate.choice('feature kind', kind, KINDS)
  k = modelinfo.kind(model)
  if k == 'mixer':
    if kind != 'block':
      raise validate.AnalysisError(
          f'feature kind {kind!r} needs a ViT; a Mixer allows: block')
    return model.hidden_dim
  if k != 'vit':
    raise validate.AnalysisError('feature visualization needs a ViT or a '
                                 'Mixer; the model is a ResNet')
  return model.mlp_dim if kind == 'mlp' else model.hidden_size


def check(model, feature: Feature) -> Feature:
  """The feature with indices validated (negative ones resolved)."""
  n = num_units(model, feature.kind)
  layer = modelinfo.check_layer(model, feature.layer)
  index = validate.index(f'{feature.kind} feature index', feature.index, n,
                         f'block {layer} has {n} {feature.kind} units')
  return Feature(feature.kind, layer, index)


def activations(model, params: PyTree, images: jax.Array, kind: str,
                layer: int) -> jax.Array:
  """Patch-token activations of one block, [B, n_patches, units].

  Args:
    model, params: the model (it is truncated after `layer` here).
    images: [B, H, W, 3] in [-1, 1].
    kind: a feature kind (module doc); layer: a valid block index.
  """
  short = modelinfo.truncate(model, layer)
  if kind in ('mlp', 'block'):
    _, inter = intermediates.apply(short, params, images)
    a = inter['mlp_hidden' if kind == 'mlp' else 'tokens'][layer]
  else:
    _, state = short.apply(
        {'params': params}, images, mutable=['intermediates'],
        capture_intermediates=lambda m, meth: m.name == kind)
    blk = state['intermediates']['Transformer'][f'encoderblock_{layer}']
    a = blk['MultiHeadDotProductAttention_1'][kind]['__call__'][0]
    a = a.reshape(a.shape[:2] + (-1,))  # [B, N, heads * d]
  return a[:, modelinfo.num_prefix(model):]


def total_variation(x: jax.Array) -> jax.Array:
  """TV of images [B, H, W, C] per image, [B] (module doc)."""
  def norm(d):  # L2 over H, W -> [B, C]
    return jnp.sqrt(jnp.sum(d * d, axis=(1, 2)) + 1e-12)
  tv = (norm(x[:, :, 1:] - x[:, :, :-1]) + norm(x[:, 1:] - x[:, :-1]) +
        norm(x[:, 1:, 1:] - x[:, :-1, :-1]) +
        norm(x[:, 1:, :-1] - x[:, :-1, 1:]))
  return tv.mean(axis=-1)


def augment(key: jax.Array, x: jax.Array, step, recipe: Recipe) -> jax.Array:
  """The ensemble of augmented copies, [F * copies, H, W, 3] (module doc)."""
  b = x.shape[0]
  ks = jax.random.split(key, 6)
  m = jax.random.uniform(ks[0], (b, 1, 1, 3), minval=-1, maxval=1)
  s = jax.random.uniform(ks[1], (b, 1, 1, 3), minval=-1, maxval=1)
  x = (x - recipe.color_shift * m) / jnp.exp(recipe.color_scale * s)
  decay = (recipe.steps - 1 - step) / recipe.steps
  x = x + jax.random.normal(ks[2], (b, 1, 1, 3)) * recipe.noise * decay
  if recipe.jitter:
    dy, dx = jax.random.randint(ks[3], (2,), -recipe.jitter,
                                recipe.jitter + 1)
    x = jnp.roll(x, (dy, dx), axis=(1, 2))
  if recipe.flip:
    flip = jax.random.bernoulli(ks[4], recipe.flip, (b, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1], x)
  return x


def make_step(model, kind: str, layer: int, indices: Sequence[int],
              recipe: Recipe, tx: optax.GradientTransformation):
  """A jitted step (images, opt_state, params, key, step) -> (.., losses)."""
  idx = jnp.asarray(indices)
  n_feat, c = len(indices), recipe.copies

  def objective(images, params, key, step):
    x = augment(key, jnp.repeat(images, c, axis=0), step, recipe)
    a = activations(model, params, x * 2.0 - 1.0, kind, layer)
    act = a.mean(axis=1)[jnp.arange(n_feat * c), jnp.repeat(idx, c)]
    act = act.reshape(n_feat, c).mean(-1)
    tv = total_variation(x).reshape(n_feat, c).mean(-1)
    per_feature = -act + recipe.tv_weight * tv
    return per_feature.sum(), (act, tv)

  @jax.jit
  def step_fn(images, opt_state, params, key, step):
    (_, (act, tv)), g = jax.value_and_grad(objective, has_aux=True)(
        images, params, key, step)
    updates, opt_state = tx.update(g, opt_state, images)
    images = jnp.clip(optax.apply_updates(images, updates), 0.0, 1.0)
    return images, opt_state, act, tv
  return step_fn


def optimizer(recipe: Recipe) -> optax.GradientTransformation:
  """Adam with cosine decay of the learning rate to 0."""
  lr = optax.cosine_decay_schedule(recipe.lr, max(recipe.steps, 1))
  return optax.adam(lr, b1=recipe.b1, b2=recipe.b2, eps=recipe.eps)


def feature_values(model, params, images01: jax.Array,
                   features: Sequence[Feature]) -> np.ndarray:
  """Activation of features[i] on images01[i] (no augmentation), [F]."""
  out = []
  for img, f in zip(images01, features):
    a = activations_jit(model, params, img[None] * 2.0 - 1.0, f.kind,
                         f.layer)
    out.append(float(a.mean(axis=1)[0, f.index]))
  return np.asarray(out)


# `activations` compiled once per (model, kind, layer).
activations_jit = jax.jit(activations, static_argnums=(0, 3, 4))


def visualize(model, params: PyTree, features: Sequence[Feature],
              image_size: Sequence[int] = (224, 224),
              recipe: Recipe = Recipe(), log_every: int = 25,
              init: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
  """Optimizes one image per feature (features of one kind and layer).

  Args:
    model, params: a ViT (or Mixer for 'block') and its parameters.
    features: same `kind` and `layer`, any indices.
    image_size: (H, W) of the images.
    recipe: hyperparameters.
    log_every: print the mean activation every this many steps (0: never).
    init: optional start images [F, H, W, 3] in [0, 1] (default uniform
      noise drawn from `recipe.seed`).

  Returns:
    {'images': [F, H, W, 3] float32 in [0, 1],
     'start': activation of each feature on its start image [F],
     'end': on its final image [F] (both without augmentation),
     'seconds': wall-clock time}.
  """
  features = [check(model, f) for f in features]
  kinds = {(f.kind, f.layer) for f in features}
  if len(kinds) != 1:
    raise validate.AnalysisError('visualize() takes features of one kind and '
                                 f'layer; got {sorted(kinds)}')
  kind, layer = kinds.pop()
  h, w = image_size
  key = jax.random.key(recipe.seed)
  key, k0 = jax.random.split(key)
  if init is None:
    images = jax.random.uniform(k0, (len(features), h, w, 3))
  else:
    images = jnp.asarray(init, jnp.float32)
  start = feature_values(model, params, images, features)
  tx = optimizer(recipe)
  opt_state = tx.init(images)
  step_fn = make_step(model, kind, layer, [f.index for f in features],
                      recipe, tx)
  t0 = time.time()
  for step in range(recipe.steps):
    images, opt_state, act, tv = step_fn(
        images, opt_state, params, jax.random.fold_in(key, step), step)
    if log_every and (step % log_every == 0 or step == recipe.steps - 1):
      print(f'  {kind} block {layer}, {len(features)} features: step '
            f'{step + 1}/{recipe.steps}, mean activation '
            f'{float(act.mean()):.3f}, tv {float(tv.mean()):.1f}, '
            f'{time.time() - t0:.0f}s', file=sys.stderr, flush=True)
  end = feature_values(model, params, images, features)
  return {'images': np.asarray(images), 'start': start, 'end': end,
          'seconds': time.time() - t0}
