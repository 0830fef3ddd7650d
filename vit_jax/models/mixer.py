"""MLP-Mixer (Tolstikhin et al. 2021) with the official checkpoint names.

Keys: `stem` (patchify conv), `MixerBlock_{i}/{LayerNorm_0, token_mixing,
LayerNorm_1, channel_mixing}` (each mixing MLP is `Dense_0`, `Dense_1`),
`pre_head_layer_norm`, `head`. Tokens are [B, N, C].

Intermediates (with `mutable=['intermediates']`): `tokens` per block.

`scan_layers=True`: the blocks are one `vit_jax.models.scan.BlockStack`
named `MixerBlock`, parameters stacked [L, ...] (`MixerBlock/LayerNorm_0/
scale` [L, C]; `.npz` files keep `MixerBlock_{i}`), run as one `nn.scan`
(block by block while intermediates are recorded). `remat_policy`
(`scan.REMAT_POLICIES`) applies `nn.remat` to every block.
"""

import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import gelu
from vit_jax.models import scan

Dtype = jnp.dtype
DotGeneral = Optional[Callable[..., jax.Array]]  # flax's hook; None: lax's

# hidden_dim, num_blocks, tokens_mlp_dim, channels_mlp_dim (Mixer paper table 1)
VARIANTS = {
    'mu': dict(hidden_dim=32, num_blocks=2, tokens_mlp_dim=16,
               channels_mlp_dim=64),
    'S': dict(hidden_dim=512, num_blocks=8, tokens_mlp_dim=256,
              channels_mlp_dim=2048),
    'B': dict(hidden_dim=768, num_blocks=12, tokens_mlp_dim=384,
              channels_mlp_dim=3072),
    'L': dict(hidden_dim=1024, num_blocks=24, tokens_mlp_dim=512,
              channels_mlp_dim=4096),
}


class MlpBlock(nn.Module):
  """Dense -> GELU (`activation`, see `vit_jax.models.gelu`) -> Dense back
  to the input width; `dot_general` is the dense layers' product."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  activation: str = gelu.DEFAULT
  dot_general: DotGeneral = None

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              dot_general=self.dot_general)
    y = nn.Dense(self.mlp_dim, name='Dense_0', **kw)(x)
    y = gelu.get(self.activation)(y)
    return nn.Dense(x.shape[-1], name='Dense_1', **kw)(y)


class MixerBlock(nn.Module):
  """Token mixing across patches, then channel mixing, both pre-norm."""
  tokens_mlp_dim: int
  channels_mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mlp_activation: str = gelu.DEFAULT
  dot_general: DotGeneral = None

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mlp = functools.partial(MlpBlock, activation=self.mlp_activation,
                            dot_general=self.dot_general, **kw)
    y = nn.LayerNorm(name='LayerNorm_0', **kw)(x)
    y = jnp.swapaxes(y, 1, 2)  # [B, C, N]
    y = mlp(self.tokens_mlp_dim, name='token_mixing')(y)
    x = x + jnp.swapaxes(y, 1, 2)
    y = nn.LayerNorm(name='LayerNorm_1', **kw)(x)
    x = x + mlp(self.channels_mlp_dim, name='channel_mixing')(y)
    if self.is_mutable_collection('intermediates'):
      self.sow('intermediates', 'tokens', x)
    return x


class MlpMixer(nn.Module):
  """Mixer classifier. Images [B, H, W, 3] -> logits [B, num_classes].

  `mlp_activation`: 'gelu_tanh' (the official code's `flax.linen.gelu`, which
  trained the released checkpoints) or 'gelu_erf' (`vit_jax.models.gelu`).
  `dot_general`: every dense layer's product, `conv_general_dilated`: the
  stem's (kernel = stride) convolution (flax's hooks; None: lax's own).
  """
  num_classes: Optional[int] = 1000
  patch_size: Sequence[int] = (16, 16)
  hidden_dim: int = 768
  num_blocks: int = 12
  tokens_mlp_dim: int = 384
  channels_mlp_dim: int = 3072
  head_bias_init: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mlp_activation: str = gelu.DEFAULT
  scan_layers: bool = False
  remat_policy: str = 'none'
  dot_general: DotGeneral = None
  conv_general_dilated: DotGeneral = None  # same signature type

  def total_stride(self) -> tuple[int, int]:
    return tuple(self.patch_size)

  def patch_grid(self, image_size: Sequence[int]) -> tuple[int, int]:
    return (image_size[0] // self.patch_size[0],
            image_size[1] // self.patch_size[1])

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    del train  # Mixer has no dropout here
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.hidden_dim, tuple(self.patch_size),
                strides=tuple(self.patch_size), padding='VALID',
                conv_general_dilated=self.conv_general_dilated, name='stem',
                **kw)(images.astype(self.dtype))
    b, h, w, c = x.shape
    x = jnp.reshape(x, (b, h * w, c))
    block_kw = dict(tokens_mlp_dim=self.tokens_mlp_dim,
                    channels_mlp_dim=self.channels_mlp_dim,
                    mlp_activation=self.mlp_activation,
                    dot_general=self.dot_general, **kw)
    policy = scan.remat_policy(self.remat_policy)
    if self.scan_layers:
      x = scan.BlockStack(MixerBlock, block_kw, self.num_blocks, 'MixerBlock',
                          self.remat_policy, name='MixerBlock')(
                              x, unrolled=self.is_mutable_collection(
                                  'intermediates'))
    else:
      block_cls = scan.rematted(MixerBlock, policy)
      for i in range(self.num_blocks):
        x = block_cls(**block_kw, name=f'MixerBlock_{i}')(x)
    x = nn.LayerNorm(name='pre_head_layer_norm', **kw)(x)
    x = jnp.mean(x, axis=1)
    if self.num_classes:
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                   bias_init=nn.initializers.constant(self.head_bias_init),
                   dot_general=self.dot_general, name='head', **kw)(x)
    return x
