"""fp32 matrix products and convolutions on the CPU through OpenBLAS (XLA
FFI custom calls).

Why: XLA:CPU runs its matmuls through YNNPACK, which on the thin shapes of a
ViT step ([3152, 192] x [192, 192], [3152, 384] x [384, 384], ...) reaches
60-110 GFLOP/s on the 2-core dev machine where OpenBLAS reaches 165-185 (a
2048^3 product: 184 vs 192). `docs/performance.md` has the table. The
models' dense layers take `dot_general` from here (flax's `dot_general=`
field), so on a single-device CPU every fp32 projection, MLP and patch
embedding is one OpenBLAS `sgemm`; everywhere else (GPU, TPU, several
devices, other dtypes, products this does not cover) it is `lax.dot_general`,
unchanged. Gradients are sgemms too, with the transposes folded into BLAS's
`trans` flags, so XLA materializes no transposed copies for the weight
gradients. The parameters and the function are the same; results differ
from XLA's product by float32 summation order only (tested against numpy).

Convolutions (`conv`, `conv_kernel_grad`; used by the ResNet stem's
`StdConv`) are implicit GEMMs: each thread unfolds a block of output pixels'
windows into a buffer in cache and multiplies it there by one sgemm, so the
kh * kw times larger unfolded input (im2col) never goes through memory. At
R26's shapes (batch 16) the forward runs at 0.9-2x the speed of XLA's
convolution; the R26+S/32 training step took 10 % less time than with an
explicit im2col (docs/performance.md). Tested against XLA's convolution,
values and kernel gradients.

The kernel is `cpu_gemm.cc`, compiled on first use with the system C++
compiler against jaxlib's FFI headers and the `scipy-openblas32` wheel
(`requirements.txt`), and cached under `$VIT_JAX_CACHE_DIR` (default
`~/.cache/vit_jax`), keyed by the source and the library versions (a 2 s
build). If it cannot be built (no compiler, no wheel) a warning says why
and XLA's products are used.

Whether a model uses these is `config.perf.cpu_gemm` (`vit_jax.perf.hooks`
passes `dot_general` to the models' hooks); a product whose operands are
not all float32, or traced for another backend, is `lax.dot_general`.
"""

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

TARGET = 'vit_jax_cpu_gemm'
CONV_TARGET = 'vit_jax_cpu_conv'
CONV_KERNEL_GRAD_TARGET = 'vit_jax_cpu_conv_kernel_grad'
_HANDLERS = {TARGET: 'VitJaxCpuGemm', CONV_TARGET: 'VitJaxCpuConv',
             CONV_KERNEL_GRAD_TARGET: 'VitJaxCpuConvKernelGrad'}
_SOURCE = os.path.join(os.path.dirname(__file__), 'cpu_gemm.cc')


def available() -> bool:
  """Whether the kernel is built and registered and the backend is a CPU."""
  return jax.default_backend() == 'cpu' and _registered()


def applies(*operands: jax.Array) -> bool:
  """Whether a product of these operands goes through the kernel:
  `available()`, all float32, none empty."""
  return (all(x.dtype == jnp.float32 and x.size for x in operands)
          and available())


def _cache_dir() -> str:
  return os.environ.get('VIT_JAX_CACHE_DIR',
                        os.path.join(os.path.expanduser('~'), '.cache',
                                     'vit_jax'))


def build(cache_dir: Optional[str] = None) -> str:
  """Compiles cpu_gemm.cc (if not cached) and returns the shared library."""
  import scipy_openblas32  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which(
      'c++') or shutil.which('clang++')
  if not compiler:
    raise RuntimeError('no C++ compiler (g++, c++ or clang++; or set $CXX)')
  with open(_SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(source + jaxlib.__version__.encode() +
                       scipy_openblas32.__version__.encode() +
                       compiler.encode()).hexdigest()[:16]
  cache_dir = cache_dir or _cache_dir()
  lib = os.path.join(cache_dir, f'cpu_gemm_{key}.so')
  if os.path.exists(lib):
    return lib
  os.makedirs(cache_dir, exist_ok=True)
  blas_lib = scipy_openblas32.get_lib_dir()
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=cache_dir)
  os.close(fd)
  cmd = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w',
         '-I', jax.ffi.include_dir(), '-I', scipy_openblas32.get_include_dir(),
         _SOURCE, '-o', tmp, '-L', blas_lib,
         '-l' + scipy_openblas32.get_library(), f'-Wl,-rpath,{blas_lib}']
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if done.returncode:
    os.unlink(tmp)
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-2000:]}')
  os.replace(tmp, lib)  # atomic: concurrent builds leave one whole library
  return lib


@functools.cache
def _registered() -> bool:
  """Builds, loads and registers the kernel once; False (warned) if it can't."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    lib = ctypes.cdll.LoadLibrary(build())
    for target, symbol in _HANDLERS.items():
      jax.ffi.register_ffi_target(
          target, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
    return True
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('vit_jax: OpenBLAS matmul kernel unavailable, using '
                    "XLA's products (slower on CPU): %s", e)
    print(f'vit_jax: OpenBLAS matmul kernel unavailable: {e}',
          file=sys.stderr)
    return False


def _require_kernels():
  if not _registered():
    raise RuntimeError('the OpenBLAS kernels are unavailable (see the '
                       'warning above)')


def gemm(a: jax.Array, b: jax.Array, trans_a: bool = False,
         trans_b: bool = False) -> jax.Array:
  """op(a) @ op(b) by the kernel, float32, no gradient rule (see `matmul`).

  a: [..., M, K] ([..., K, M] if trans_a); b: [K, N] ([N, K] if trans_b) or
  with the same leading batch as a. Returns [..., M, N].
  """
  _require_kernels()
  m = a.shape[-1] if trans_a else a.shape[-2]
  n = b.shape[-2] if trans_b else b.shape[-1]
  out = jax.ShapeDtypeStruct(a.shape[:-2] + (m, n), jnp.float32)
  return jax.ffi.ffi_call(TARGET, out, vmap_method='sequential')(
      a, b, trans_a=bool(trans_a), trans_b=bool(trans_b))


def _conv_attrs(kernel_size, strides, padding):
  (kh, kw), (sh, sw), ((pt, _), (pl, _)) = kernel_size, strides, padding
  return dict(kh=np.int64(kh), kw=np.int64(kw), sh=np.int64(sh),
              sw=np.int64(sw), pad_top=np.int64(pt), pad_left=np.int64(pl))


def conv_output_size(size: Sequence[int], kernel_size: Sequence[int],
                     strides: Sequence[int],
                     padding: Sequence[Sequence[int]]) -> tuple[int, int]:
  """(OH, OW) of a convolution of [H, W] = `size` with explicit padding."""
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(
      size, kernel_size, strides, padding))


def conv(x: jax.Array, kernel: jax.Array, kernel_size: Sequence[int],
         strides: Sequence[int],
         padding: Sequence[Sequence[int]]) -> jax.Array:
  """2-D convolution by the kernel as an implicit GEMM; no gradient rule.

  x: [B, H, W, C] float32; kernel: the [kh * kw * C, O] reshape of an HWIO
  kernel; padding: ((top, bottom), (left, right)) zeros. Returns
  [B, OH, OW, O]. The unfolded input (im2col) is built a block of rows at
  a time in cache, never whole in memory.
  """
  _require_kernels()
  oh, ow = conv_output_size(x.shape[1:3], kernel_size, strides, padding)
  out = jax.ShapeDtypeStruct((x.shape[0], oh, ow, kernel.shape[-1]),
                             jnp.float32)
  return jax.ffi.ffi_call(CONV_TARGET, out, vmap_method='sequential')(
      x, kernel, **_conv_attrs(kernel_size, strides, padding))


def conv_kernel_grad(x: jax.Array, dy: jax.Array, kernel_size: Sequence[int],
                     strides: Sequence[int],
                     padding: Sequence[Sequence[int]]) -> jax.Array:
  """The [kh * kw * C, O] gradient of `conv`'s kernel: unfold(x)^T @ dy.

  x: [B, H, W, C]; dy: [B, OH, OW, O], both float32.
  """
  _require_kernels()
  kh, kw = kernel_size
  out = jax.ShapeDtypeStruct((kh * kw * x.shape[-1], dy.shape[-1]),
                             jnp.float32)
  return jax.ffi.ffi_call(CONV_KERNEL_GRAD_TARGET, out,
                          vmap_method='sequential')(
                              x, dy, **_conv_attrs(kernel_size, strides,
                                                   padding))


@jax.custom_vjp
def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [..., M, K] @ b ([K, N] or [..., K, N]) -> [..., M, N], differentiable."""
  return gemm(a, b)


def _matmul_fwd(a, b):
  return gemm(a, b), (a, b)


def _matmul_bwd(res, g):
  a, b = res
  da = gemm(g, b, trans_b=True)  # g [..., M, N] b^T [N, K]
  if b.ndim == 2 and a.ndim > 2:  # shared b: one product over all rows
    a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
    db = gemm(a2, g2, trans_a=True)
  else:
    db = gemm(a, g, trans_a=True)
  return da, db


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def batched_matmul(a: jax.Array, b: jax.Array, trans_a: bool = False,
                   trans_b: bool = False,
                   preferred_element_type=None) -> jax.Array:
  """op(a) @ op(b) over matching leading batch dims, e.g. attention's
  [B, h, N, d] x [B, h, d, N] products; op transposes the last two dims.

  Through the kernel where `applies(a, b)`, else
  `lax.dot_general` (which folds the transposes into its dimension numbers).
  No gradient rule of its own: for use inside hand-written backward passes.
  """
  if a.ndim == b.ndim and applies(a, b):
    return gemm(a, b, trans_a, trans_b)
  nd = a.ndim
  batch = tuple(range(nd - 2))
  contract = ((nd - 2 if trans_a else nd - 1,), (nd - 1 if trans_b else nd - 2,))
  return lax.dot_general(a, b, (contract, (batch, batch)),
                         preferred_element_type=preferred_element_type)


def _is_plain_contraction(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
                          dimension_numbers) -> bool:
  """Trailing lhs dims contracted with leading rhs dims, in order, no batch."""
  (lc, rc), (lb, rb) = dimension_numbers
  lc = [d % len(lhs_shape) for d in lc]
  rc = [d % len(rhs_shape) for d in rc]
  nc = len(lc)
  return (not lb and not rb and nc > 0
          and lc == list(range(len(lhs_shape) - nc, len(lhs_shape)))
          and rc == list(range(nc))
          and len(rhs_shape) > nc and len(lhs_shape) > nc)


def dot_general(lhs, rhs, dimension_numbers, precision=None,
                preferred_element_type=None):
  """`lax.dot_general`, through the OpenBLAS kernel where it `applies`.

  Covers what dense layers do (flax `Dense` / `DenseGeneral`): the trailing
  dims of fp32 `lhs` contracted with the leading dims of fp32 `rhs`, no batch
  dims; anything else falls through to `lax.dot_general`.
  """
  if (preferred_element_type in (None, jnp.float32)
      and _is_plain_contraction(lhs.shape, rhs.shape, dimension_numbers)
      and applies(lhs, rhs)):
    nc = len(dimension_numbers[0][0])
    k = int(np.prod(rhs.shape[:nc]))
    rows, cols = lhs.shape[:-nc], rhs.shape[nc:]
    y = matmul(lhs.reshape(-1, k), rhs.reshape(k, -1))
    return y.reshape(rows + cols)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type)
