"""Vision Transformer (Dosovitskiy et al. 2020), its hybrids and conv-stem variant.

Parameter names and shapes equal those of the released `.npz` checkpoints of
google-research/vision_transformer (pre-Linen numbering included:
`encoderblock_{i}/LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`,
`MlpBlock_3`), so a checkpoint maps onto the parameter tree key for key.

Shapes: images are [B, H, W, 3] in [-1, 1]; tokens are [B, N, D] with N patch
tokens (plus one class token for `classifier='token'`); attention weights are
[B, heads, N, N].

Intermediates. Applied with `mutable=['intermediates']` the model records
(see `vit_jax.models.intermediates`):
  `tokens`      per block, the block's output tokens [B, N, D];
  `attention`   per block, the softmax attention weights [B, heads, N, N];
  `mlp_hidden`  per block, the GELU output inside the MLP [B, N, mlp_dim];
  `pre_logits`  the pooled representation fed to the head.
"""

import functools
from typing import Any, Callable, Literal, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import gelu
from vit_jax.models import resnet
from vit_jax.models import scan

Classifier = Literal['token', 'gap', 'map', 'unpooled', 'token_unpooled']
CLASSIFIERS = ('token', 'gap', 'map', 'unpooled', 'token_unpooled')
ClsInsertMode = Literal['alone', 'raw']
CLS_INSERT_MODES = ('alone', 'raw')
Dtype = jnp.dtype
# flax's `dot_general=` / `conv_general_dilated=` hooks (None: lax's own).
DotGeneral = Optional[Callable[..., jax.Array]]
ConvGeneralDilated = Optional[Callable[..., jax.Array]]
# (q [B, Nq, h, d], k [B, Nk, h, d], v [B, Nk, h, d]) -> [B, Nq, h, d].
AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

# Hidden size, MLP size, heads, layers of the standard sizes (ViT paper table 1;
# Ti and S from DeiT / AugReg; g, G from Zhai et al. 2022 "Scaling Vision
# Transformers" table 2; e from PaLI (Chen et al. 2022); So400m, the
# shape-optimized ViT of Alabdulmohsin et al. 2023, as big_vision's
# `decode_variant`). Parameters at /14, 224 px, with a class token and no
# head: g 1.01 B, G 1.84 B, e 3.80 B, So400m 0.41 B (0.43 B with the MAP head).
VARIANTS = {
    'mu': dict(hidden_size=32, mlp_dim=128, num_heads=2, num_layers=2),
    'Ti': dict(hidden_size=192, mlp_dim=768, num_heads=3, num_layers=12),
    'S': dict(hidden_size=384, mlp_dim=1536, num_heads=6, num_layers=12),
    'B': dict(hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
    'L': dict(hidden_size=1024, mlp_dim=4096, num_heads=16, num_layers=24),
    'H': dict(hidden_size=1280, mlp_dim=5120, num_heads=16, num_layers=32),
    'So400m': dict(hidden_size=1152, mlp_dim=4304, num_heads=16,
                   num_layers=27),
    'g': dict(hidden_size=1408, mlp_dim=6144, num_heads=16, num_layers=40),
    'G': dict(hidden_size=1664, mlp_dim=8192, num_heads=16, num_layers=48),
    'e': dict(hidden_size=1792, mlp_dim=15360, num_heads=16, num_layers=56),
}


def _record(module: nn.Module, name: str, value: jax.Array) -> None:
  """Stores `value` in the 'intermediates' collection when it is mutable."""
  if module.is_mutable_collection('intermediates'):
    module.sow('intermediates', name, value)


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense, the transformer's feed-forward block.

  Attributes:
    mlp_dim: hidden width.
    out_dim: output width (defaults to the input width).
    dropout_rate: dropout after the GELU and after the output projection.
    activation: 'gelu_tanh' (as the released checkpoints) or 'gelu_erf'
      (`vit_jax.models.gelu`).
    dot_general: the dense layers' product (flax's hook; None: lax's).
  """
  mlp_dim: int
  out_dim: Optional[int] = None
  dropout_rate: float = 0.0
  activation: str = gelu.DEFAULT
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dot_general: DotGeneral = None

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    dense = functools.partial(
        nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
        dot_general=self.dot_general,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6))
    h = dense(self.mlp_dim, name='Dense_0')(x)
    h = gelu.get(self.activation)(h)
    _record(self, 'mlp_hidden', h)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    y = dense(self.out_dim or x.shape[-1], name='Dense_1')(h)
    return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)


def _head_major(t):
  """[B, N, h, d] <-> [B, h, N, d]."""
  return t.transpose(0, 2, 1, 3)


def _attention_forward(q, k, v, dropout=None):
  """(softmax(q k^T) v, float32 weights [B, h, Nq, Nk]) for head-major
  q [B, h, Nq, d] (already scaled), k, v [B, h, Nk, d]; `dropout`, if
  given, is applied to the weights before v."""
  logits = jnp.einsum('bhqd,bhkd->bhqk', q, k,
                      preferred_element_type=jnp.float32)
  p = jax.nn.softmax(logits, axis=-1)
  p_used = p if dropout is None else dropout(p)
  return jnp.einsum('bhqk,bhkd->bhqd', p_used.astype(v.dtype), v), p


def _head_major_attention(q, k, v, dropout):
  """softmax(q k^T / sqrt(d)) v for q [B, Nq, h, d], k, v [B, Nk, h, d].

  Returns (output [B, Nq, h, d], float32 weights [B, h, Nq, Nk]). Computed
  head-major ([B, h, N, d]). Logits and softmax are float32; `dropout`
  (or None) is applied to the weights.
  """
  q, k, v = (_head_major(t) for t in (q, k, v))
  q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  y, w = _attention_forward(q, k, v, dropout)
  return _head_major(y), w


def dot_product_attention(q, k, v):
  """softmax(q k^T / sqrt(d)) v of q [B, Nq, h, d], k, v [B, Nk, h, d]
  -> [B, Nq, h, d]: `_head_major_attention` without dropout and weights.

  The models' default `attention_fn`: exact, float32 softmax, plain autodiff.
  """
  return _head_major_attention(q, k, v, None)[0]


class Attention(nn.Module):
  """Multi-head dot-product attention with the official parameter layout.

  The `query`/`key`/`value` weights (`kernel`) are [D, heads, D/heads] and
  `out`'s are [heads, D/heads, D], as in flax's
  `MultiHeadDotProductAttention`. The
  product of q, k, v is `attention_fn` (default `dot_product_attention`,
  float32 softmax); while intermediates are recorded or attention dropout is
  active, which need the weights, it is `_head_major_attention` whatever
  `attention_fn` says. `dot_general` is the projections' product.
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_fn: AttentionFn = dot_product_attention
  dot_general: DotGeneral = None

  @nn.compact
  def __call__(self, x_q, x_kv=None, *, deterministic: bool = True):
    x_kv = x_q if x_kv is None else x_kv
    d = x_q.shape[-1]
    if d % self.num_heads:
      raise ValueError(
          f'hidden size {d} is not divisible by num_heads={self.num_heads}')
    dense = functools.partial(
        nn.DenseGeneral, features=(self.num_heads, d // self.num_heads),
        dtype=self.dtype, param_dtype=self.param_dtype,
        dot_general=self.dot_general,
        kernel_init=nn.initializers.xavier_uniform())
    q = dense(name='query')(x_q)  # [B, Nq, h, d/h]
    k = dense(name='key')(x_kv)   # [B, Nk, h, d/h]
    v = dense(name='value')(x_kv)
    needs_weights = (self.is_mutable_collection('intermediates')
                     or (self.dropout_rate > 0 and not deterministic))
    if not needs_weights:
      y = self.attention_fn(q, k, v)
    else:
      y, w = _head_major_attention(
          q, k, v, functools.partial(nn.Dropout(self.dropout_rate),
                                     deterministic=deterministic))
      _record(self, 'attention', w)
    return nn.DenseGeneral(
        features=d, axis=(-2, -1), dtype=self.dtype,
        param_dtype=self.param_dtype, dot_general=self.dot_general,
        kernel_init=nn.initializers.xavier_uniform(), name='out')(y)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)).

  `first_token_only=True` returns only the first token's output [B, 1, D]:
  every token still serves as a key and value, but only the first one is a
  query, and the output projection and MLP run on that row alone. The same
  function as the full block's row 0 (rows of a matmul are independent);
  ViT's last block with a class-token classifier, where nothing else is read.
  `attention_fn`, `dot_general`: see `Attention`.
  """
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  first_token_only: bool = False
  mlp_activation: str = gelu.DEFAULT
  attention_fn: AttentionFn = dot_product_attention
  dot_general: DotGeneral = None

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              dot_general=self.dot_general)
    y = nn.LayerNorm(name='LayerNorm_0', dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)
    if self.first_token_only:
      x = x[:, :1]
    y = Attention(self.num_heads, self.attention_dropout_rate,
                  attention_fn=self.attention_fn,
                  name='MultiHeadDotProductAttention_1', **kw)(
                      y[:, :1] if self.first_token_only else y, y,
                      deterministic=deterministic)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = nn.LayerNorm(name='LayerNorm_2', dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)
    y = MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate,
                 activation=self.mlp_activation, name='MlpBlock_3', **kw)(
                     y, deterministic=deterministic)
    x = x + y
    _record(self, 'tokens', x)
    return x


class PositionEmbedding(nn.Module):
  """Holds the learned position embedding [1, N, D] (normal, std 0.02)."""
  shape: Sequence[int]
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self):
    return self.param('pos_embedding', nn.initializers.normal(stddev=0.02),
                      tuple(self.shape), self.param_dtype)


class Encoder(nn.Module):
  """Position embedding, `num_layers` blocks and the final LayerNorm.

  The class token (if any) gets row 0 of the position embedding and is
  normally prepended before the first block. `cls_insert_layer=k` (0..L) is
  the CLS late-insertion probe of Ghiasi et al. 2022: the class token joins
  the patch tokens only before block k (k = L: never), and before that
  `cls_insert_mode` says what it does:
    'alone' (default; the authors' `experiments/it17/cls.py`): it runs
      through blocks 0..k-1 by itself, as a one-token sequence that attends
      only to itself, with the same block parameters; the patch tokens run
      through those blocks without it.
    'raw': it skips blocks 0..k-1; the token prepended before block k is the
      raw one (learned token + position row 0).
  Either way the patch tokens never see the class token before block k.
  Intermediates of blocks 0..k-1 (`tokens` [B, N, D], `attention`
  [B, heads, N, N], `mlp_hidden`) are those of the patch tokens; the class
  token's one-token pass is recorded after them in the same `sow` tuple,
  which `intermediates.collect` drops.

  `scan_layers=True`: blocks 0..L-2 are one `vit_jax.models.scan.BlockStack`
  named `encoderblock`, parameters stacked [L-1, ...] (`Transformer/
  encoderblock/...`), and block L-1 keeps its own `encoderblock_{L-1}`
  (`.npz` files hold every block as `encoderblock_{i}`; see
  `vit_jax.models.scan`). Normally that is one `nn.scan` over the whole
  stack and the last block, computing the class token alone when only it
  is read (`EncoderBlock.first_token_only`), without copying the stack. CLS
  late insertion runs slices of the stack: blocks 0..k-1 (patch tokens,
  then the class token alone), k..L-2, then the last block. While
  intermediates are recorded the stack runs block by block (recorded under
  `encoderblock/encoderblock_{i}`, the unrolled model's values).
  `remat_policy` (`scan.REMAT_POLICIES`) applies `nn.remat` to every block,
  scanned or not; `remat=True` is 'nothing_saveable'.
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mlp_activation: str = gelu.DEFAULT
  scan_layers: bool = False
  remat_policy: str = 'none'
  attention_fn: AttentionFn = dot_product_attention
  dot_general: DotGeneral = None

  @nn.compact
  def __call__(self, x, cls=None, *, cls_insert_layer: int = 0,
               cls_insert_mode: ClsInsertMode = 'alone', train: bool = False,
               class_token_only: bool = False):
    """Tokens [B, N, D] (and the class token [1, 1, D] or None) -> encoded
    tokens [B, N(+1), D]; with `class_token_only` (needs `cls`), only the
    class token's [B, 1, D], and the last block computes that row alone
    (`EncoderBlock.first_token_only`)."""
    if class_token_only and cls is None:
      raise ValueError('class_token_only needs a class token')
    k, n_layers = cls_insert_layer, self.num_layers
    if cls is None and k:
      raise ValueError(f'cls_insert_layer={k} needs a class token')
    if not 0 <= k <= n_layers:
      raise ValueError(f'cls_insert_layer={k} is out of range '
                       f'[0, {n_layers}]')
    if cls_insert_mode not in CLS_INSERT_MODES:
      raise ValueError(f'cls_insert_mode={cls_insert_mode!r}; allowed: '
                       f'{", ".join(CLS_INSERT_MODES)}')
    b, n, d = x.shape
    n_prefix = 0 if cls is None else 1
    pe = PositionEmbedding((1, n_prefix + n, d), self.param_dtype,
                           name='posembed_input')()
    x = x + pe[:, n_prefix:].astype(x.dtype)
    if cls is not None:
      cls = jnp.broadcast_to(cls + pe[:, :1], (b, 1, d)).astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    run = self._runner(train, class_token_only)
    # With k = L and only the class token read, the patch tokens are unused.
    patches_read = not (class_token_only and k == n_layers)
    if k:  # k > 0 only with a class token
      if patches_read:  # first, so that its intermediates are the ones kept
        x = run(x, 0, k)
      if cls_insert_mode == 'alone':
        cls = run(cls, 0, k)  # [B, 1, D]
    if cls is not None:
      x = jnp.concatenate([cls, x], axis=1) if patches_read else cls
    x = run(x, k, n_layers)
    return nn.LayerNorm(name='encoder_norm', dtype=self.dtype,
                        param_dtype=self.param_dtype)(x)

  def _runner(self, train: bool, class_token_only: bool):
    """run(x, start, stop): blocks start..stop-1 applied to x; the last
    block (L-1) computes the first token alone with `class_token_only`."""
    n_layers = self.num_layers
    policy = scan.remat_policy(self.remat_policy, self.remat)
    block_kw = dict(
        mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
        param_dtype=self.param_dtype, mlp_activation=self.mlp_activation,
        attention_fn=self.attention_fn, dot_general=self.dot_general)
    if not self.scan_layers:
      block_cls = scan.rematted(EncoderBlock, policy)
      blocks = [block_cls(**block_kw,
                          first_token_only=class_token_only and
                          i == n_layers - 1,
                          name=f'encoderblock_{i}')
                for i in range(n_layers)]

      def run(x, start, stop):
        for i in range(start, stop):
          x = blocks[i](x, deterministic=not train)
        return x
      return run

    # Blocks 0..L-2 stacked, block L-1 on its own (`Encoder` doc).
    stack = scan.BlockStack(EncoderBlock, block_kw, n_layers - 1,
                            'encoderblock', policy or 'none',
                            name='encoderblock')
    last = scan.rematted(EncoderBlock, policy)(
        **block_kw, first_token_only=class_token_only,
        name=f'encoderblock_{n_layers - 1}')
    unrolled = self.is_mutable_collection('intermediates')

    def run_scanned(x, start, stop):
      if start < min(stop, n_layers - 1):
        x = stack(x, start, min(stop, n_layers - 1), unrolled=unrolled,
                  call_kwargs=dict(deterministic=not train))
      if stop == n_layers and start < stop:
        x = last(x, deterministic=not train)
      return x
    return run_scanned


class MAPHead(nn.Module):
  """Multihead attention pooling (big_vision's MAPHead; timm's attn_pool)."""
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mlp_activation: str = gelu.DEFAULT
  attention_fn: AttentionFn = dot_product_attention
  dot_general: DotGeneral = None

  @nn.compact
  def __call__(self, x):
    b, _, d = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              dot_general=self.dot_general)
    probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, d),
                       self.param_dtype)
    probe = jnp.broadcast_to(probe, (b, 1, d)).astype(x.dtype)
    x = Attention(self.num_heads, attention_fn=self.attention_fn,
                  name='MultiHeadDotProductAttention_0', **kw)(probe, x)
    y = nn.LayerNorm(name='LayerNorm_0', dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)
    x = x + MlpBlock(self.mlp_dim, activation=self.mlp_activation,
                     name='MlpBlock_0', **kw)(y)
    return x[:, 0]


class ConvStem(nn.Module):
  """Xiao et al. 2021 convolutional stem: 3x3 stride-2 convs, then patchify.

  Each conv is followed by LayerNorm over channels and ReLU (the paper uses
  BatchNorm; LayerNorm keeps the model free of batch statistics). The final
  1x1 projection to the hidden size is the model's `embedding` conv.
  """
  channels: Sequence[int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_general_dilated: ConvGeneralDilated = None

  @nn.compact
  def __call__(self, x):
    for i, c in enumerate(self.channels):
      x = nn.Conv(c, (3, 3), strides=(2, 2), padding='SAME', use_bias=False,
                  dtype=self.dtype, param_dtype=self.param_dtype,
                  conv_general_dilated=self.conv_general_dilated,
                  name=f'conv_{i}')(x)
      x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f'norm_{i}')(x)
      x = nn.relu(x)
    return x


class VisionTransformer(nn.Module):
  """ViT classifier; with `resnet_layers` set, the R+ViT hybrid.

  Attributes:
    num_classes: head width; 0 or None returns the pooled features.
    patch_size: (h, w) of the `embedding` conv (kernel = stride).
    hidden_size, mlp_dim, num_heads, num_layers: transformer size.
    classifier: 'token' (class token), 'gap' (mean of tokens), 'map'
      (attention pooling), 'unpooled' / 'token_unpooled' (all tokens).
    representation_size: width of the tanh pre-logits layer, or None.
    resnet_layers: units per ResNetV2 stage of a hybrid stem; () for the
      stage-less root (R_Ti); None for a plain ViT.
    resnet_width: width factor of the hybrid stem.
    conv_stem: channels of a Xiao et al. conv stem (replaces patchify; then
      `patch_size` is the 1x1 projection), or None.
    head_bias_init: initial head bias (the head kernel starts at zero).
    dtype: compute dtype; param_dtype: parameter dtype.
    remat: rematerialize each block in the backward pass (saves memory);
      the same as remat_policy='nothing_saveable'.
    remat_policy: 'none', 'nothing_saveable', 'dots_saveable' or
      'dots_with_no_batch_dims_saveable': the `jax.checkpoint_policies`
      policy of `nn.remat` around every block (`vit_jax.models.scan`).
    scan_layers: encoder blocks 0..L-2 as an `nn.scan` with parameters
      stacked [L-1, ...] (`Transformer/encoderblock/...`), the last block
      apart: two blocks compiled instead of L; see `Encoder`.
    attention_fn, dot_general, conv_general_dilated, group_norm_cls,
      weight_standardize: computation hooks (below).
    mlp_activation: the MLP blocks' (and MAP head's) GELU: 'gelu_tanh', the
      form of the official code and the released checkpoints, or
      'gelu_erf', the exact form (timm's default); `vit_jax.models.gelu`.

  Computation hooks (same function and parameters whatever they are; the
  defaults are flax's / jax's own; a caller may pass others):
    attention_fn: (q, k, v) [B, N, h, d] -> [B, Nq, h, d], default
      `dot_product_attention`.
    dot_general: every dense layer's product (flax's `dot_general=`;
      None: `lax.dot_general`).
    conv_general_dilated: every convolution's, the patch embedding's too
      (flax's `conv_general_dilated=`; None: `lax.conv_general_dilated`).
    group_norm_cls, weight_standardize: the hybrid stem's GroupNorm module
      and StdConv kernel standardization (`vit_jax.models.resnet`).
  """
  num_classes: Optional[int] = 1000
  patch_size: Sequence[int] = (16, 16)
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_heads: int = 12
  num_layers: int = 12
  classifier: Classifier = 'token'
  representation_size: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  resnet_layers: Optional[Sequence[int]] = None
  resnet_width: int = 1
  conv_stem: Optional[Sequence[int]] = None
  head_bias_init: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  mlp_activation: str = gelu.DEFAULT
  scan_layers: bool = False
  remat_policy: str = 'none'
  attention_fn: AttentionFn = dot_product_attention
  dot_general: DotGeneral = None
  conv_general_dilated: ConvGeneralDilated = None
  group_norm_cls: Any = nn.GroupNorm
  weight_standardize: Callable[..., jax.Array] = resnet.weight_standardize

  def total_stride(self) -> tuple[int, int]:
    """Pixels per patch token along (height, width)."""
    s = 1
    if self.resnet_layers is not None:
      s = resnet.stem_stride(self.resnet_layers)
    elif self.conv_stem is not None:
      s = 2 ** len(self.conv_stem)
    return (s * self.patch_size[0], s * self.patch_size[1])

  def patch_grid(self, image_size: Sequence[int]) -> tuple[int, int]:
    """Token grid (h, w) for an image of `image_size` = (height, width)."""
    sh, sw = self.total_stride()
    return (image_size[0] // sh, image_size[1] // sw)

  @nn.compact
  def __call__(self, images, *, train: bool = False,
               cls_insert_layer: int = 0,
               cls_insert_mode: ClsInsertMode = 'alone'):
    """Maps images [B, H, W, 3] to logits [B, num_classes] (see class doc).

    `cls_insert_layer=k` (0..num_layers) and `cls_insert_mode` ('alone' or
    'raw'): the CLS late-insertion probe, see `Encoder`; k = 0 is the normal
    model.
    """
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f'classifier={self.classifier!r}; allowed: '
                       f'{", ".join(CLASSIFIERS)}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype)
    if self.resnet_layers is not None:
      x = resnet.root_and_stages(
          x, self.resnet_layers, self.resnet_width,
          conv_general_dilated=self.conv_general_dilated,
          group_norm_cls=self.group_norm_cls,
          weight_standardize=self.weight_standardize, **kw)
    elif self.conv_stem is not None:
      x = ConvStem(tuple(self.conv_stem), name='stem',
                   conv_general_dilated=self.conv_general_dilated, **kw)(x)
    x = nn.Conv(self.hidden_size, tuple(self.patch_size),
                strides=tuple(self.patch_size), padding='VALID',
                conv_general_dilated=self.conv_general_dilated,
                name='embedding', **kw)(x)
    b, h, w, c = x.shape
    x = jnp.reshape(x, (b, h * w, c))  # [B, N, D]

    cls = None
    if self.classifier in ('token', 'token_unpooled'):
      cls = self.param('cls', nn.initializers.zeros, (1, 1, c),
                       self.param_dtype)
    # With a class-token classifier only row 0 of the last block is read:
    # that block computes it alone (about 1/num_layers of the FLOPs less),
    # unless intermediates are recorded (they hold every block's tokens).
    class_token_only = (self.classifier == 'token' and
                        not self.is_mutable_collection('intermediates'))
    x = Encoder(self.num_layers, self.mlp_dim, self.num_heads,
                self.dropout_rate, self.attention_dropout_rate, self.remat,
                mlp_activation=self.mlp_activation,
                scan_layers=self.scan_layers, remat_policy=self.remat_policy,
                attention_fn=self.attention_fn, dot_general=self.dot_general,
                name='Transformer', **kw)(
                    x, cls, cls_insert_layer=cls_insert_layer,
                    cls_insert_mode=cls_insert_mode, train=train,
                    class_token_only=class_token_only)

    if self.classifier == 'token':
      x = x[:, 0]
    elif self.classifier == 'gap':
      x = jnp.mean(x, axis=1)
    elif self.classifier == 'map':
      x = MAPHead(self.num_heads, self.mlp_dim,
                  mlp_activation=self.mlp_activation,
                  attention_fn=self.attention_fn,
                  dot_general=self.dot_general, name='MAPHead_0', **kw)(x)

    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, name='pre_logits',
                   dot_general=self.dot_general, **kw)(x)
      x = jnp.tanh(x)
    _record(self, 'pooled', x)  # exposed as 'pre_logits' by intermediates
    if self.num_classes:
      x = nn.Dense(self.num_classes, name='head',
                   kernel_init=nn.initializers.zeros,
                   bias_init=nn.initializers.constant(self.head_bias_init),
                   dot_general=self.dot_general, **kw)(x)
    return x
