"""Parameter counts and analytic forward FLOPs of any model in the registry.

FLOPs are counted as 2 x multiply-accumulates of every matrix product
(`dot_general`, and the OpenBLAS products and convolutions of
`vit_jax.perf.cpu_gemm`) and convolution in the forward pass, read off
the model's jaxpr: exact for any architecture, with no per-family formula to keep in
sync. Elementwise work (GELU, softmax, norms, adds) is not counted; it is
under 1 % for ViTs. This is the convention that matches a measured `2 n^3`
matmul peak, so `flops * img_per_s / peak` is the model-FLOPs utilization.
(Papers and fvcore often quote multiply-accumulates instead: ViT-B/16 at 224
is 17.6 G multiply-accumulates = 35.1 GFLOPs with every token through every
block. Our ViTs with a class-token classifier compute the last block for the
class token alone, the only row that is read (`vit.EncoderBlock`), so the
jaxpr holds 32.7 GFLOPs; that is what is counted here, and MFU is not
inflated by work that is skipped.)
"""

from typing import Any, Sequence

import jax
import jax.extend.core  # noqa: F401  (jaxprs_in_params)
import jax.numpy as jnp
import numpy as np

from vit_jax.perf import cpu_gemm


def count_params(tree: Any) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _eqn_flops(eqn) -> int:
  name = eqn.primitive.name
  if name == 'dot_general':
    (lc, rc), (lb, _) = eqn.params['dimension_numbers']
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    contract = int(np.prod([lhs[d] for d in lc]))
    out = int(np.prod(eqn.outvars[0].aval.shape))
    return 2 * out * contract
  if (name == 'ffi_call'
      and eqn.params.get('target_name') == cpu_gemm.TARGET):
    # op(a) [..., M, K] @ op(b) [..., K, N]: K is a's contracted dim.
    a = eqn.invars[0].aval.shape
    trans_a = dict(eqn.params['attributes'])['trans_a']
    contract = a[-2] if trans_a else a[-1]
    out = int(np.prod(eqn.outvars[0].aval.shape))
    return 2 * out * int(contract)
  if (name == 'ffi_call'
      and eqn.params.get('target_name') == cpu_gemm.CONV_TARGET):
    # x [B, H, W, C] conv kernel [kh kw C, O] -> [B, OH, OW, O]
    k = eqn.invars[1].aval.shape[0]
    return 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(k)
  if name == 'conv_general_dilated':
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params['dimension_numbers']
    # kernel elements per output = prod(spatial) * in_features / groups
    out_feature_dim = dn.rhs_spec[0]
    k = int(np.prod(rhs)) // rhs[out_feature_dim]
    out = int(np.prod(eqn.outvars[0].aval.shape))
    return 2 * out * k
  return 0


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      mult = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
      total += mult * _jaxpr_flops(sub)
  return total


def forward_flops(model, image_size: Sequence[int] = (224, 224),
                  **apply_kwargs) -> int:
  """FLOPs (2 x MACs of matmuls and convs) of one image's forward pass."""
  x = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  fn = lambda v, im: model.apply(v, im, **apply_kwargs)
  return _jaxpr_flops(jax.make_jaxpr(fn)(variables, x).jaxpr)


def vit_flops_formula(num_layers: int, hidden: int, mlp_dim: int,
                      num_tokens: int, patch_pixels: int,
                      num_classes: int, last_layer_queries: int = 0) -> int:
  """Closed-form ViT forward FLOPs (2 x MACs) for cross-checking.

  Args:
    num_tokens: sequence length T (patches, plus 1 for a class token).
    patch_pixels: p * p * 3, inputs per patch of the embedding conv.
    last_layer_queries: rows the last block computes (0: all T). Our ViTs
      with a class-token classifier compute 1 (`vit.EncoderBlock`'s
      `first_token_only`); the figures usually quoted assume all T.
  """
  t, d = num_tokens, hidden

  def layer(q):  # q query rows, t keys / values
    return (2 * q * d * d + 2 * t * d * 2 * d + 2 * 2 * q * t * d
            + 2 * q * d * d + 2 * 2 * q * d * mlp_dim)
  n_patches = t - 1  # class token is not embedded by the conv
  return (2 * n_patches * patch_pixels * d + (num_layers - 1) * layer(t)
          + layer(last_layer_queries or t) + 2 * d * num_classes)
