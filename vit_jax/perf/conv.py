"""Convolutions as matrix products, for flax's `conv_general_dilated=` hook.

`make(mode)` returns a drop-in replacement for `lax.conv_general_dilated`
that computes a 2-D NHWC x HWIO convolution (one feature group, no
dilation, 'SAME' / 'VALID' / explicit padding) as one matrix product of the
unfolded input with the [kh * kw * C, O] kernel, and everything else by
`lax.conv_general_dilated`:

  'pointwise'      1x1 kernels only (the input at the stride, then a matmul);
  'im2col'         every kernel: the explicit im2col, then a matmul whose
                   kernel gradient materializes its input first (below);
  'implicit_gemm'  1x1 as above, larger kernels by the OpenBLAS implicit-GEMM
                   kernels of `vit_jax.perf.cpu_gemm` (fp32 on a CPU).

'im2col' and 'implicit_gemm' compute a kernel = stride 'VALID' convolution
(the ViT / Mixer patch embedding) as reshapes and one matmul (OpenBLAS's
under 'implicit_gemm').

Why: XLA:CPU computes the kernel gradient of a convolution at ~6-20 GFLOP/s
and that of a matmul at ~100. Same function and parameters; float32
summation order differs.
"""

import functools
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp

from vit_jax.perf import cpu_gemm

MODES = ('pointwise', 'im2col', 'implicit_gemm')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def explicit_padding(size, kernel_size, strides, padding):
  """((top, bottom), (left, right)) zeros of a convolution of [H, W] = `size`
  with 'SAME' (lax / TensorFlow convention: the odd one at the bottom /
  right), 'VALID' or explicit ((lo, hi), (lo, hi)) `padding`."""
  if not isinstance(padding, str):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  if padding == 'VALID':
    return ((0, 0), (0, 0))
  pads = []
  for n, k, s in zip(size, kernel_size, strides):
    total = max((-(-n // s) - 1) * s + k - n, 0)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


def im2col(x, kernel_size, strides, pads):
  """[B, H, W, C] -> [B, H', W', kh * kw * C] patches, (kh, kw, C)-ordered,
  for explicit `pads` ((top, bottom), (left, right)): `im2col(x) @
  kernel.reshape(-1, O)` is the convolution with the HWIO `kernel`."""
  kh, kw = kernel_size
  sh, sw = strides
  oh, ow = cpu_gemm.conv_output_size(x.shape[1:3], kernel_size, strides, pads)
  if (kh, kw) == (1, 1) and not any(p for pp in pads for p in pp):
    return x[:, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw]
  x = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  cols = [x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
          for i in range(kh) for j in range(kw)]
  return jnp.concatenate(cols, axis=-1)


def patches(x: jax.Array, patch) -> jax.Array:
  """[B, H, W, C] -> [B, H // ph, W // pw, ph * pw * C] (row-major,
  non-overlapping patches; rows / columns that do not fill one dropped)."""
  ph, pw = patch
  b, h, w, c = x.shape
  gh, gw = h // ph, w // pw
  x = x[:, :gh * ph, :gw * pw]
  x = x.reshape(b, gh, ph, gw, pw, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh, gw, ph * pw * c)


def _patch_embed(x, kernel, patch, openblas: bool):
  """A kernel = stride VALID convolution (the ViT / Mixer patch embedding)
  as reshapes and one matmul: on XLA:CPU 1.4x (forward) to 1.7x (forward +
  backward) faster than the convolution for ViT-S/16 at 224 px."""
  cols = patches(x, patch)
  w = kernel.reshape(-1, kernel.shape[-1])
  if openblas and cpu_gemm.applies(cols, w):
    y = cpu_gemm.matmul(cols.reshape(-1, cols.shape[-1]), w)
    return y.reshape(cols.shape[:-1] + (w.shape[-1],))
  return _matmul(cols, w)


@jax.custom_vjp
def _matmul(x, w):
  """x [..., K] @ w [K, N], with a backward that suits XLA:CPU (below)."""
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(res, g):
  """dx = g w^T; dw = x^T g with x materialized in its own layout first:
  left to itself XLA:CPU fuses the recomputed GroupNorm / ReLU producing x
  into the transpose the kernel gradient needs, a loop reading at a stride
  of C; the barrier keeps the elementwise work contiguous."""
  x, w = res
  x2 = lax.optimization_barrier(x.reshape(-1, x.shape[-1]))
  return g @ w.T, x2.T @ g.reshape(-1, g.shape[-1])


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _implicit_gemm(x, kernel, strides, pads):
  """x [B, H, W, C] conv kernel [kh, kw, C, O] -> [B, H', W', O] by the
  OpenBLAS implicit-GEMM kernels (explicit `pads`). The input gradient of
  a stride-1 convolution is the same forward kernel on the output gradient
  with the flipped, transposed kernel; strided ones take one product with
  the kernel and the transpose of im2col."""
  return _implicit_gemm_fwd(x, kernel, strides, pads)[0]


def _implicit_gemm_fwd(x, kernel, strides, pads):
  y = cpu_gemm.conv(x, kernel.reshape(-1, kernel.shape[-1]), kernel.shape[:2],
                    strides, pads)
  return y, (x, kernel)


def _implicit_gemm_bwd(strides, pads, res, g):
  x, kernel = res
  (kh, kw), o = kernel.shape[:2], kernel.shape[-1]
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
                       tuple(dpads))
  else:
    _, cols_vjp = jax.vjp(lambda x: im2col(x, (kh, kw), strides, pads), x)
    dcols = cpu_gemm.gemm(g.reshape(-1, o), kernel.reshape(-1, o),
                          trans_b=True)
    dx = cols_vjp(dcols.reshape(g.shape[:3] + (-1,)))[0]
  return dx, dkernel.reshape(kernel.shape)


_implicit_gemm.defvjp(_implicit_gemm_fwd, _implicit_gemm_bwd)


def _is_plain_2d(lhs, rhs, window_strides, lhs_dilation, rhs_dilation,
                 dimension_numbers, feature_group_count) -> bool:
  ones = lambda v: v is None or all(d == 1 for d in v)
  if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1:
    return False
  if not (ones(lhs_dilation) and ones(rhs_dilation)):
    return False
  want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  got = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return got == want and len(window_strides) == 2


def make(mode: str) -> Callable[..., jax.Array]:
  """A `lax.conv_general_dilated` that computes plain 2-D convolutions as
  `mode` says (module doc), everything else as lax does."""
  if mode not in MODES:
    raise ValueError(f'conv mode {mode!r}; allowed: {", ".join(MODES)}')
  return _CONVS[mode]


def _conv(mode, lhs, rhs, window_strides, padding, lhs_dilation=None,
          rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
          batch_group_count=1, precision=None, preferred_element_type=None):
  plain = batch_group_count == 1 and _is_plain_2d(
      lhs, rhs, window_strides, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count)
  kernel_size = tuple(rhs.shape[:2])
  pointwise = kernel_size == (1, 1)
  if not plain or (mode == 'pointwise' and not pointwise):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count, precision,
        preferred_element_type)
  strides = tuple(window_strides)
  pads = explicit_padding(lhs.shape[1:3], kernel_size, strides, padding)
  if (strides == kernel_size and not pointwise and mode != 'pointwise'
      and not any(p for pp in pads for p in pp)):
    return _patch_embed(lhs, rhs, kernel_size, mode == 'implicit_gemm')
  if (mode == 'implicit_gemm' and not pointwise
      and cpu_gemm.applies(lhs, rhs)):
    return _implicit_gemm(lhs, rhs, strides, pads)
  cols = im2col(lhs, kernel_size, strides, pads)
  kernel = rhs.reshape(-1, rhs.shape[-1])
  if mode == 'implicit_gemm' and cpu_gemm.applies(cols, kernel):
    y = cpu_gemm.matmul(cols.reshape(-1, cols.shape[-1]), kernel)
    return y.reshape(cols.shape[:-1] + (kernel.shape[-1],))
  if jax.default_backend() == 'cpu':
    return _matmul(cols, kernel)
  return cols @ kernel


_CONVS = {m: functools.partial(_conv, m) for m in MODES}
