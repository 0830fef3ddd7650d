"""ResNetV2 (BiT): weight-standardized convs + GroupNorm, bottleneck units.

Two uses: the stem of the R+ViT hybrids (`root_and_stages`, whose parameters
sit at the top level of the ViT as in the official checkpoints: `conv_root`,
`gn_root`, `block{s}/unit{u}/{conv1,conv2,conv3,conv_proj,gn1,gn2,gn3,gn_proj}`),
and a plain ResNet classifier (`ResNet`) used as the CNN baseline of the
analyses. Images are [B, H, W, 3]; the root divides H and W by 4 and every
stage after the first by 2 more.
"""

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.perf import cpu_gemm

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
  """(w - mean) / (std + eps) over `axis`, as in the official hybrid code.

  For an HWIO kernel standardized over all but the output axis (StdConv) the
  gradient is written out (`_standardize_columns`): XLA:CPU compiles the
  autodiff one into slow column reductions (a [1, 1, 1024, 2048] kernel:
  21 ms against 5).
  """
  axes = sorted(a % w.ndim for a in axis)
  if axes == list(range(w.ndim - 1)):
    return _standardize_columns(w.reshape(-1, w.shape[-1]), eps).reshape(
        w.shape)
  w = w - jnp.mean(w, axis=axis)
  return w / (jnp.std(w, axis=axis) + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _standardize_columns(w, eps):
  """w [K, O] -> (w - mean) / (std + eps), statistics over K per column."""
  return _standardize_columns_fwd(w, eps)[0]


def _standardize_columns_fwd(w, eps):
  c = w - jnp.mean(w, axis=0)
  std = jnp.sqrt(jnp.mean(c * c, axis=0))
  out = c / (std + eps)
  return out, (out, std)


def _standardize_columns_bwd(eps, res, g):
  """With out = c / d, c = w - mean(w), d = std + eps, std^2 = mean(c^2):
  dc = g / d - out * sum_K(g out) / (K std), dw = dc - mean_K(dc). A
  constant column (std = 0) gets dc = g / eps (the autodiff one is NaN)."""
  out, std = res
  d, k = std + eps, out.shape[0]
  a = jnp.sum(g * out, axis=0)
  safe_std = jnp.where(std > 0, std, 1.0)
  dc = g / d + out * jnp.where(std > 0, -a / (safe_std * k), 0.0)
  return (dc - jnp.mean(dc, axis=0),)


_standardize_columns.defvjp(_standardize_columns_fwd, _standardize_columns_bwd)


@jax.custom_vjp
def _matmul(x, w):
  """x [..., K] @ w [K, N], with a backward that suits XLA:CPU (below)."""
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(res, g):
  """dx = g w^T; dw = x^T g with x materialized in its own layout first.

  Left to itself XLA:CPU fuses the recomputed GroupNorm / ReLU producing x
  into the transpose that the kernel gradient needs, a loop that reads its
  inputs at a stride of C (R26+S/32 training: ~2 of 8.5 s per step); the
  barrier keeps the elementwise work contiguous and the transpose plain.
  """
  x, w = res
  x2 = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]))
  return g @ w.T, x2.T @ g.reshape(-1, g.shape[-1])


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def explicit_padding(size, kernel_size, strides, padding):
  """((top, bottom), (left, right)) zeros of a 'SAME' (TensorFlow / flax
  convention: the odd one at the bottom / right) or 'VALID' convolution of
  [H, W] = `size`."""
  if padding == 'VALID':
    return ((0, 0), (0, 0))
  pads = []
  for n, k, s in zip(size, kernel_size, strides):
    total = max((-(-n // s) - 1) * s + k - n, 0)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


def im2col(x, kernel_size, strides, padding):
  """[B, H, W, C] -> [B, H', W', kh * kw * C] patches, (kh, kw, C)-ordered.

  Row (i, j) of every patch is the input at offset (i, j) of the window, so
  `im2col(x, ...) @ kernel.reshape(-1, O)` equals the convolution with the
  HWIO `kernel`, for 'SAME' (TensorFlow / flax convention) or 'VALID'.
  """
  kh, kw = kernel_size
  sh, sw = strides
  if (kh, kw) == (1, 1):
    return x[:, ::sh, ::sw]
  pads = explicit_padding(x.shape[1:3], kernel_size, strides, padding)
  oh, ow = cpu_gemm.conv_output_size(x.shape[1:3], kernel_size, strides, pads)
  x = jnp.pad(x, ((0, 0),) + pads + ((0, 0),))
  cols = [x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
          for i in range(kh) for j in range(kw)]
  return jnp.concatenate(cols, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_cpu(x, kernel, strides, padding):
  """x [B, H, W, C] conv kernel [kh, kw, C, O] -> [B, H', W', O] on the CPU
  ('SAME' or 'VALID' `padding`), by the OpenBLAS kernels.

  Forward and kernel gradient are implicit GEMMs (`cpu_gemm.conv`,
  `cpu_gemm.conv_kernel_grad`: the unfolded input is built block by block in
  cache): the forward at 0.9-2x the speed of XLA's convolution at R26's
  shapes, the R26+S/32 training step 10 % faster than with an explicit
  im2col + matmul (docs/performance.md). The input gradient of a stride-1
  convolution is the same forward kernel applied to the output gradient
  with the flipped, transposed kernel; strided ones take one product with
  the kernel and the transpose of im2col.
  """
  return _conv_cpu_fwd(x, kernel, strides, padding)[0]


def _conv_cpu_fwd(x, kernel, strides, padding):
  size = kernel.shape[:2]
  pads = explicit_padding(x.shape[1:3], size, strides, padding)
  y = cpu_gemm.conv(x, kernel.reshape(-1, kernel.shape[-1]), size, strides,
                    pads)
  return y, (x, kernel)


def _conv_cpu_bwd(strides, padding, res, g):
  x, kernel = res
  (kh, kw), o = kernel.shape[:2], kernel.shape[-1]
  pads = explicit_padding(x.shape[1:3], (kh, kw), strides, padding)
  dkernel = cpu_gemm.conv_kernel_grad(x, g, (kh, kw), strides, pads)
  if tuple(strides) == (1, 1):
    # dx[y] = sum_i g[y - i + top] w[i]: a correlation of g with the flipped
    # kernel, input and output features swapped, padded by k - 1 - top.
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dpads = []
    for k, (lo, _), n, m in zip((kh, kw), pads, x.shape[1:3], g.shape[1:3]):
      top = k - 1 - lo
      dpads.append((top, n - 1 + k - m - top))  # n output rows from m
    dx = cpu_gemm.conv(g, flipped.reshape(-1, x.shape[-1]), (kh, kw), (1, 1),
                       dpads)
  else:
    # im2col's transpose (a sum of padded slices); its forward here is unused.
    _, cols_vjp = jax.vjp(lambda x: im2col(x, (kh, kw), strides, padding), x)
    dcols = cpu_gemm.gemm(g.reshape(-1, o), kernel.reshape(-1, o),
                          trans_b=True)
    dx = cols_vjp(dcols.reshape(g.shape[:3] + (-1,)))[0]
  return dx, dkernel.reshape(kernel.shape)


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


class StdConv(nn.Conv):
  """Convolution with weight standardization of its kernel (HWIO).

  2-D convolutions with 'SAME' / 'VALID' padding are computed as one matmul
  of the unfolded input with the [kh * kw * C, O] kernel (kernels larger
  than 1x1 on CPU only): for 1x1 kernels the strided input; larger ones by
  the OpenBLAS implicit-GEMM kernels where they apply (`_conv_cpu`), else
  `im2col`. The same function and parameters, but XLA:CPU computes the
  kernel gradient of a convolution at ~6-20 GFLOP/s and that of the matmul
  at ~100 (docs/performance.md).
  """

  def param(self, name, init_fn, *init_args, **init_kwargs):
    p = super().param(name, init_fn, *init_args, **init_kwargs)
    if name == 'kernel':
      p = weight_standardize(p, axis=[0, 1, 2], eps=1e-5)
    return p

  def _as_matmul(self) -> bool:
    """1x1 convs everywhere; larger kernels only on CPU, where the unfolded
    input (kh * kw times the activation) pays for itself; GPUs and TPUs keep
    their native convolutions."""
    ones = lambda v: v is None or all(d == 1 for d in (
        (v,) if isinstance(v, int) else v))
    pointwise = tuple(self.kernel_size) == (1, 1)
    return (self.feature_group_count == 1 and len(self.kernel_size) == 2
            and ones(self.kernel_dilation) and ones(self.input_dilation)
            and not isinstance(self.padding, (list, tuple))
            and (pointwise or jax.default_backend() == 'cpu'))

  @nn.compact
  def __call__(self, inputs):
    if not self._as_matmul() or inputs.ndim != 4 or (
        self.padding not in ('SAME', 'VALID')):
      return super().__call__(inputs)
    kh, kw = self.kernel_size
    strides = ((self.strides, self.strides) if isinstance(self.strides, int)
               else tuple(self.strides or (1, 1)))
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias,
                                              dtype=self.dtype)
    if (kh, kw) != (1, 1) and cpu_gemm.applies(x, kernel):
      y = _conv_cpu(x, kernel, strides, self.padding)
      return y if bias is None else y + bias
    cols = im2col(x, (kh, kw), strides, self.padding)
    kernel = kernel.reshape(-1, self.features)
    if cpu_gemm.applies(cols, kernel):
      y = cpu_gemm.matmul(cols.reshape(-1, cols.shape[-1]), kernel)
      y = y.reshape(cols.shape[:-1] + (self.features,))
    elif jax.default_backend() == 'cpu':
      y = _matmul(cols, kernel)
    else:
      y = cols @ kernel
    return y if bias is None else y + bias


class GroupNorm(nn.Module):
  """`nn.GroupNorm` for [B, H, W, C] inputs: same `scale` / `bias` [C], same
  function (32 groups, eps 1e-6, float32 statistics, variance as
  E[x^2] - E[x]^2), statistics reduced in two stages: over H * W to [B, C],
  then within each group. XLA:CPU does the one-pass reduction over
  (H, W, C / groups) ~2.7x slower (in an R26+S/32 training step at batch 32
  it took ~0.55 s). On CPU in float32 the backward is written out
  (`_group_norm`).
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    b, c, g = x.shape[0], x.shape[-1], self.num_groups
    if c % g:
      raise ValueError(f'{c} channels are not divisible into {g} groups')
    scale = self.param('scale', self.scale_init, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    if (jax.default_backend() == 'cpu' and x.ndim == 4 and
        all(t.dtype == jnp.float32 for t in (x, scale, bias)) and
        self.dtype in (None, jnp.float32)):
      return _group_norm(x, scale, bias, g, self.epsilon)
    stats_dtype = jnp.promote_types(x.dtype, jnp.float32)
    flat = x.reshape(b, -1, c).astype(stats_dtype)           # [B, HW, C]
    y = _group_norm_fwd(flat, scale, bias, g, self.epsilon)[0]
    dtype = self.dtype or jnp.result_type(x, scale, bias)
    return y.reshape(x.shape).astype(dtype)


def _group_stats(flat, groups, eps):
  """flat [B, N, C] -> (mean, 1 / sqrt(var + eps)), each [B, groups]."""
  b, n, c = flat.shape
  per_group = lambda s: s.reshape(b, groups, c // groups).sum(-1) / (
      n * (c // groups))
  mean = per_group(jnp.sum(flat, axis=1))
  var = jnp.maximum(per_group(jnp.sum(flat * flat, axis=1)) - mean ** 2, 0)
  return mean, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _group_norm(x, scale, bias, groups, eps):
  """GroupNorm of float32 x [B, H, W, C] with scale, bias [C] (CPU path).

  Same function as `GroupNorm`'s general path; the backward is written out
  with two reductions over H * W (sum dy, sum dy * x, to [B, C]) and one
  elementwise pass, where XLA:CPU's autodiff makes three to four passes.
  """
  return _group_norm_fwd(x, scale, bias, groups, eps)[0]


def _per_channel(t, c):
  """[B, G] -> [B, 1, C]: each group's value repeated over its channels."""
  return jnp.repeat(t, c // t.shape[1], axis=-1)[:, None, :]


def _group_norm_fwd(x, scale, bias, groups, eps):
  """(GroupNorm of x [B, ..., C], residuals); also `GroupNorm`'s general path."""
  b, c = x.shape[0], x.shape[-1]
  flat = x.reshape(b, -1, c)
  mean, rstd = _group_stats(flat, groups, eps)
  y = (flat - _per_channel(mean, c)) * (_per_channel(rstd, c) * scale) + bias
  return y.reshape(x.shape), (x, scale, mean, rstd)


def _group_norm_bwd(groups, eps, res, g):
  """With xhat = (x - mean) * rstd and h = dy * scale, per group of n
  elements: dx = rstd * (h - sum(h) / n - xhat * sum(h * xhat) / n)."""
  del eps
  x, scale, mean, rstd = res
  b, c = x.shape[0], x.shape[-1]
  flat, dy = x.reshape(b, -1, c), g.reshape(b, -1, c)
  n = flat.shape[1] * (c // groups)
  s1 = jnp.sum(dy, axis=1)                                   # [B, C]
  s2 = jnp.sum(dy * flat, axis=1)                            # [B, C]
  mean_c, rstd_c = _per_channel(mean, c)[:, 0], _per_channel(rstd, c)[:, 0]
  dy_xhat = rstd_c * (s2 - mean_c * s1)                      # sum dy * xhat
  per_group = lambda t: t.reshape(b, groups, c // groups).sum(-1) / n
  sum_h = _per_channel(per_group(scale * s1), c)             # [B, 1, C]
  sum_h_xhat = _per_channel(per_group(scale * dy_xhat), c)
  xhat = (flat - mean_c[:, None]) * rstd_c[:, None]
  dx = rstd_c[:, None] * (dy * scale - sum_h - xhat * sum_h_xhat)
  return dx.reshape(x.shape), dy_xhat.sum(0), s1.sum(0)


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1 (x4 width), post-norm."""
  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    gn = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    residual = x
    if x.shape[-1] != self.features * 4 or tuple(self.strides) != (1, 1):
      residual = StdConv(self.features * 4, (1, 1), self.strides,
                         name='conv_proj', **kw)(residual)
      residual = GroupNorm(name='gn_proj', **gn)(residual)
    y = StdConv(self.features, (1, 1), name='conv1', **kw)(x)
    y = nn.relu(GroupNorm(name='gn1', **gn)(y))
    y = StdConv(self.features, (3, 3), self.strides, name='conv2', **kw)(y)
    y = nn.relu(GroupNorm(name='gn2', **gn)(y))
    y = StdConv(self.features * 4, (1, 1), name='conv3', **kw)(y)
    y = GroupNorm(name='gn3', scale_init=nn.initializers.zeros, **gn)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`units` bottleneck units; the first one carries the stride."""
  units: int
  features: int
  first_stride: Sequence[int]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for u in range(self.units):
      x = ResidualUnit(self.features, self.first_stride if u == 0 else (1, 1),
                       self.dtype, self.param_dtype, name=f'unit{u + 1}')(x)
    return x


def stem_stride(layers: Sequence[int]) -> int:
  """Total stride of `root_and_stages(layers)`: 4 for the root, x2 per stage."""
  return 4 * 2 ** max(len(layers) - 1, 0)


def root_and_stages(x, layers: Sequence[int], width: int = 1, *,
                    dtype=jnp.float32, param_dtype=jnp.float32):
  """Root (7x7/2 conv, GN, ReLU, 3x3/2 max-pool) then bottleneck stages.

  Must be called inside a compact module: the convs become that module's
  submodules (the top-level names of the official hybrid checkpoints).

  Args:
    x: images [B, H, W, C].
    layers: units per stage; () keeps only the root.
    width: width factor (64 * width channels after the root).

  Returns:
    Features [B, H/s, W/s, C'] with s = stem_stride(layers).
  """
  w = int(64 * width)
  kw = dict(dtype=dtype, param_dtype=param_dtype)
  x = StdConv(w, (7, 7), (2, 2), use_bias=False, name='conv_root', **kw)(x)
  x = nn.relu(GroupNorm(name='gn_root', **kw)(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
  for s, units in enumerate(layers):
    x = ResNetStage(units, w * 2 ** s, (2, 2) if s else (1, 1),
                    name=f'block{s + 1}', **kw)(x)
  return x


class ResNet(nn.Module):
  """ResNetV2 classifier: root, stages, global average pool, linear head.

  Attributes:
    num_classes: head width; 0 or None returns pooled features [B, C].
    layers: units per stage (see `DEPTHS`).
    width: width factor.
  """
  num_classes: Optional[int] = 1000
  layers: Sequence[int] = (3, 4, 6, 3)
  width: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    del train  # no dropout or batch statistics
    x = root_and_stages(images.astype(self.dtype), self.layers, self.width,
                        dtype=self.dtype, param_dtype=self.param_dtype)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes:
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                   name='head', dtype=self.dtype,
                   param_dtype=self.param_dtype)(x)
    return x
