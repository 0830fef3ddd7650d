"""Attention functions for the ViT's `attention_fn` hook (`vit_jax.models.vit`).

Each maps q [B, Nq, h, d], k, v [B, Nk, h, d] to softmax(q k^T / sqrt(d)) v
[B, Nq, h, d], the function of the model's default
`vit.dot_product_attention` (head-major einsums, float32 softmax):

  cudnn(seq_multiple)  cuDNN flash attention (GPU, bf16 / fp16), sequences
                       zero-padded to a multiple of `seq_multiple` with the
                       padded keys masked out (cuDNN rejects some lengths,
                       e.g. ViT's 197 in training); a single query (the last
                       block's class token) takes the default.
"""

import functools

import jax
import jax.numpy as jnp

from vit_jax.models import vit


@functools.cache
def cudnn(seq_multiple: int = 8) -> vit.AttentionFn:
  """cuDNN attention with sequences padded to a multiple of `seq_multiple`
  (one function per value, so equal settings give equal models)."""
  if seq_multiple < 1:
    raise ValueError(f'cudnn seq_multiple={seq_multiple} must be >= 1')

  def attention(q, k, v):
    b, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    if nq == 1:
      return vit.dot_product_attention(q, k, v)
    pad = lambda n: -n % seq_multiple
    if not pad(nq) and not pad(nk):
      return jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
    widths = lambda n: ((0, 0), (0, pad(n)), (0, 0), (0, 0))
    q, k, v = (jnp.pad(q, widths(nq)), jnp.pad(k, widths(nk)),
               jnp.pad(v, widths(nk)))
    y = jax.nn.dot_product_attention(
        q, k, v, query_seq_lengths=jnp.full((b,), nq, jnp.int32),
        key_value_seq_lengths=jnp.full((b,), nk, jnp.int32),
        implementation='cudnn')
    return y[:, :nq]

  attention.__name__ = attention.__qualname__ = f'cudnn_{seq_multiple}'
  return attention


def xla_dot_product(q, k, v):
  """`jax.nn.dot_product_attention`'s XLA path (head axis between the
  sequence and feature axes)."""
  return jax.nn.dot_product_attention(q, k, v, implementation='xla')


def _lax_bmm(a, b, trans_a=False, trans_b=False, preferred_element_type=None):
  """op(a) @ op(b) over matching leading batch dims (op: transpose of the
  last two)."""
  nd = a.ndim
  batch = tuple(range(nd - 2))
  contract = ((nd - 2 if trans_a else nd - 1,),
              (nd - 1 if trans_b else nd - 2,))
  return jax.lax.dot_general(a, b, (contract, (batch, batch)),
                             preferred_element_type=preferred_element_type)


@functools.cache
def custom_grad(bmm=None) -> vit.AttentionFn:
  """Attention with a hand-written backward: the softmax gradient as
  FlashAttention writes it, ds = p * (dp - delta) with delta = rowsum(dy * y)
  ([B, h, N]) instead of autodiff's rowsum(dp * p) over [B, h, N, N].

  `bmm(a, b, trans_a, trans_b, preferred_element_type)`: the batched
  products (default: `lax.dot_general`; `cpu_gemm.batched_matmul` for
  OpenBLAS).
  """
  bmm = bmm or _lax_bmm
  f32 = jnp.float32

  def fwd(q, k, v):
    logits = bmm(q, k, trans_b=True, preferred_element_type=f32)
    p = jax.nn.softmax(logits, axis=-1)
    y = bmm(p.astype(v.dtype), v)
    return y, (q, k, v, p, y)

  def bwd(res, dy):
    q, k, v, p, y = res
    dv = bmm(p.astype(v.dtype), dy, trans_a=True)
    dp = bmm(dy, v, trans_b=True, preferred_element_type=f32)
    delta = jnp.sum(dy.astype(f32) * y.astype(f32), axis=-1, keepdims=True)
    ds = (p * (dp - delta)).astype(q.dtype)
    return bmm(ds, k), bmm(ds, q, trans_a=True), dv

  core = jax.custom_vjp(lambda q, k, v: fwd(q, k, v)[0])
  core.defvjp(fwd, bwd)

  def attention(q, k, v):
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # head-major
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    return core(q, k, v).transpose(0, 2, 1, 3)

  return attention
