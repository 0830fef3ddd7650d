"""ResNetV2 (BiT): weight-standardized convs + GroupNorm, bottleneck units.

Two uses: the stem of the R+ViT hybrids (`root_and_stages`, whose parameters
sit at the top level of the ViT as in the official checkpoints: `conv_root`,
`gn_root`, `block{s}/unit{u}/{conv1,conv2,conv3,conv_proj,gn1,gn2,gn3,gn_proj}`),
and a plain ResNet classifier (`ResNet`) used as the CNN baseline of the
analyses. Images are [B, H, W, 3]; the root divides H and W by 4 and every
stage after the first by 2 more.
"""

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype

# Units per stage of the standard depths.
DEPTHS = {
    'R26': (2, 2, 2, 2),
    'R50': (3, 4, 6, 3),
    'R50-hybrid': (3, 4, 9),  # the R50 of R50+ViT-B/16: 3 stages, stride 16
    'R101': (3, 4, 23, 3),
    'R8': (1, 1, 1),          # small CPU-sized baseline for the analyses
}


def weight_standardize(w, axis, eps):
  """(w - mean) / (std + eps) over `axis`, as in the official hybrid code."""
  w = w - jnp.mean(w, axis=axis)
  return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
  """Convolution with weight standardization of its kernel (HWIO), over all
  but the output axis (eps 1e-5), as the official code's `StdConv`.

  `standardize(w, axis, eps)` computes it (default `weight_standardize`);
  flax's `conv_general_dilated=` hook computes the convolution.
  """
  standardize: Callable[..., jax.Array] = weight_standardize

  def param(self, name, init_fn, *init_args, **init_kwargs):
    p = super().param(name, init_fn, *init_args, **init_kwargs)
    if name == 'kernel':
      p = self.standardize(p, axis=[0, 1, 2], eps=1e-5)
    return p


ConvGeneralDilated = Optional[Callable[..., jax.Array]]


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1 (x4 width), post-norm.

  `conv_general_dilated` (flax's hook; None: lax's), `group_norm_cls` (a
  module with `nn.GroupNorm`'s parameters and constructor) and
  `weight_standardize` (`StdConv.standardize`) compute the unit's layers.
  """
  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_general_dilated: ConvGeneralDilated = None
  group_norm_cls: Any = nn.GroupNorm
  weight_standardize: Callable[..., jax.Array] = weight_standardize

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
              conv_general_dilated=self.conv_general_dilated,
              standardize=self.weight_standardize)
    gn = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = self.group_norm_cls
    residual = x
    if x.shape[-1] != self.features * 4 or tuple(self.strides) != (1, 1):
      residual = StdConv(self.features * 4, (1, 1), self.strides,
                         name='conv_proj', **kw)(residual)
      residual = norm(name='gn_proj', **gn)(residual)
    y = StdConv(self.features, (1, 1), name='conv1', **kw)(x)
    y = nn.relu(norm(name='gn1', **gn)(y))
    y = StdConv(self.features, (3, 3), self.strides, name='conv2', **kw)(y)
    y = nn.relu(norm(name='gn2', **gn)(y))
    y = StdConv(self.features * 4, (1, 1), name='conv3', **kw)(y)
    y = norm(name='gn3', scale_init=nn.initializers.zeros, **gn)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`units` bottleneck units; the first one carries the stride. The
  computation hooks as in `ResidualUnit`."""
  units: int
  features: int
  first_stride: Sequence[int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_general_dilated: ConvGeneralDilated = None
  group_norm_cls: Any = nn.GroupNorm
  weight_standardize: Callable[..., jax.Array] = weight_standardize

  @nn.compact
  def __call__(self, x):
    for u in range(self.units):
      x = ResidualUnit(self.features, self.first_stride if u == 0 else (1, 1),
                       self.dtype, self.param_dtype,
                       conv_general_dilated=self.conv_general_dilated,
                       group_norm_cls=self.group_norm_cls,
                       weight_standardize=self.weight_standardize,
                       name=f'unit{u + 1}')(x)
    return x


def stem_stride(layers: Sequence[int]) -> int:
  """Total stride of `root_and_stages(layers)`: 4 for the root, x2 per stage."""
  return 4 * 2 ** max(len(layers) - 1, 0)


def root_and_stages(x, layers: Sequence[int], width: int = 1, *,
                    dtype=jnp.float32, param_dtype=jnp.float32,
                    conv_general_dilated: ConvGeneralDilated = None,
                    group_norm_cls: Any = nn.GroupNorm,
                    weight_standardize: Callable[..., jax.Array] = (
                        weight_standardize)):
  """Root (7x7/2 conv, GN, ReLU, 3x3/2 max-pool) then bottleneck stages.

  Must be called inside a compact module: the convs become that module's
  submodules (the top-level names of the official hybrid checkpoints).

  Args:
    x: images [B, H, W, C].
    layers: units per stage; () keeps only the root.
    width: width factor (64 * width channels after the root).
    conv_general_dilated, group_norm_cls, weight_standardize: the
      computation hooks of `ResidualUnit`.

  Returns:
    Features [B, H/s, W/s, C'] with s = stem_stride(layers).
  """
  w = int(64 * width)
  kw = dict(dtype=dtype, param_dtype=param_dtype)
  hooks = dict(conv_general_dilated=conv_general_dilated,
               group_norm_cls=group_norm_cls,
               weight_standardize=weight_standardize)
  x = StdConv(w, (7, 7), (2, 2), use_bias=False, name='conv_root',
              conv_general_dilated=conv_general_dilated,
              standardize=weight_standardize, **kw)(x)
  x = nn.relu(group_norm_cls(name='gn_root', **kw)(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
  for s, units in enumerate(layers):
    x = ResNetStage(units, w * 2 ** s, (2, 2) if s else (1, 1),
                    name=f'block{s + 1}', **hooks, **kw)(x)
  return x


class ResNet(nn.Module):
  """ResNetV2 classifier: root, stages, global average pool, linear head.

  Attributes:
    num_classes: head width; 0 or None returns pooled features [B, C].
    layers: units per stage (see `DEPTHS`).
    width: width factor.
    conv_general_dilated, group_norm_cls, weight_standardize: computation
      hooks (`ResidualUnit`; defaults: flax's / the official code's).
    dot_general: the head's product (flax's hook; None: lax's).
  """
  num_classes: Optional[int] = 1000
  layers: Sequence[int] = (3, 4, 6, 3)
  width: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_general_dilated: ConvGeneralDilated = None
  group_norm_cls: Any = nn.GroupNorm
  weight_standardize: Callable[..., jax.Array] = weight_standardize
  dot_general: Optional[Callable[..., jax.Array]] = None

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    del train  # no dropout or batch statistics
    x = root_and_stages(images.astype(self.dtype), self.layers, self.width,
                        dtype=self.dtype, param_dtype=self.param_dtype,
                        conv_general_dilated=self.conv_general_dilated,
                        group_norm_cls=self.group_norm_cls,
                        weight_standardize=self.weight_standardize)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes:
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                   name='head', dtype=self.dtype,
                   param_dtype=self.param_dtype,
                   dot_general=self.dot_general)(x)
    return x
