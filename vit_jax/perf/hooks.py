"""The performance seam: a run's `config.perf` -> the models' computation hooks.

The models (`vit_jax.models`) compute with flax's and jax's own code unless a
constructor hook says otherwise (`dot_general`, `conv_general_dilated`,
`attention_fn`, `group_norm_cls`, `weight_standardize`). Every caller that
builds a model to run it asks this module which hooks to pass:

    model = models.get_model(name, **hooks.model_overrides(
        config.perf, jax.default_backend(), jax.device_count(), name),
        **other_overrides)

`'auto'` resolves to `CPU_DEFAULTS` on a single-device CPU (measured by
`benchmarks/perf_defaults.py`; docs/performance.md has the table) and to the
stock path everywhere else: GPUs and TPUs get `{}` unless the config names a
piece explicitly. Every piece computes the same function with the same
parameters (float32 summation order aside; tests/models/test_fast_paths.py).

Knobs (`config.perf`, `defaults()`):
  cpu_gemm       'auto' | 'on' | 'off': fp32 dense products by OpenBLAS
                 (`vit_jax.perf.cpu_gemm`; CPU only).
  attention      'auto' | 'einsum' (the model's own head-major einsums) |
                 'xla' (`jax.nn.dot_product_attention`'s XLA path) |
                 'custom_grad' (hand-written backward, `perf.attention`) |
                 'cudnn' (GPU flash attention, `perf.attention.cudnn`).
  cudnn_seq_multiple  sequence padding multiple of 'cudnn' (int >= 1).
  conv           'auto' | 'xla' | 'pointwise' | 'im2col' | 'implicit_gemm'
                 (`vit_jax.perf.conv`).
  group_norm     'auto' | 'flax' | 'two_stage' (`perf.group_norm`).
  weight_std     'auto' | 'plain' | 'custom_grad' (`perf.weight_std`).
  microbatches   independent micro-batches per step (`perf.microbatch`);
                 0 = automatic.
  host_malloc    'auto' | 'on' | 'off': glibc allocator settings for XLA:CPU
                 (`perf.host_malloc`), applied at program start.
"""

import dataclasses
from typing import Any, Mapping, Optional

CHOICES = {
    'cpu_gemm': ('auto', 'on', 'off'),
    'attention': ('auto', 'einsum', 'xla', 'custom_grad', 'cudnn'),
    'conv': ('auto', 'xla', 'pointwise', 'im2col', 'implicit_gemm'),
    'group_norm': ('auto', 'flax', 'two_stage'),
    'weight_std': ('auto', 'plain', 'custom_grad'),
    'host_malloc': ('auto', 'on', 'off'),
}
INTS = {'microbatches': 0, 'cudnn_seq_multiple': 1}  # key -> minimum

# What 'auto' means on a single-device CPU (benchmarks/perf_defaults.py).
CPU_DEFAULTS = {
    'cpu_gemm': 'on',
    'attention': 'custom_grad',
    'conv': 'implicit_gemm',
    'group_norm': 'two_stage',
    'weight_std': 'custom_grad',
}
# ... and everywhere else: the stock path.
STOCK = {
    'cpu_gemm': 'off',
    'attention': 'einsum',
    'conv': 'xla',
    'group_norm': 'flax',
    'weight_std': 'plain',
}


def defaults() -> dict[str, Any]:
  """The `config.perf` block's keys and default values."""
  return dict(cpu_gemm='auto', attention='auto', cudnn_seq_multiple=8,
              conv='auto', group_norm='auto', weight_std='auto',
              microbatches=0, host_malloc='auto')


def _as_dict(perf) -> dict[str, Any]:
  return perf.to_dict() if hasattr(perf, 'to_dict') else dict(perf or {})


def validate(perf: Mapping[str, Any], prefix: str = 'config.perf') -> None:
  """Raises a one-line ValueError for an unknown key or a bad value."""
  perf = _as_dict(perf)
  allowed = sorted(defaults())
  for key in perf.keys():
    if key not in defaults():
      raise ValueError(f'{prefix}: unknown key {key!r}; allowed: '
                       f'{", ".join(allowed)}')
  for key, choices in CHOICES.items():
    if key in perf and perf[key] not in choices:
      raise ValueError(f'{prefix}.{key}={perf[key]!r}; allowed: '
                       f'{", ".join(choices)}')
  for key, low in INTS.items():
    if key in perf and (not isinstance(perf[key], int)
                        or isinstance(perf[key], bool) or perf[key] < low):
      raise ValueError(f'{prefix}.{key}={perf[key]!r} must be an integer '
                       f'>= {low}')


def resolve(perf: Mapping[str, Any], platform: str,
            num_devices: int = 1) -> dict[str, Any]:
  """The concrete choice of every piece (no 'auto' left) for `platform`
  ('cpu', 'gpu', 'tpu') with `num_devices` devices."""
  validate(perf)
  full = {**defaults(), **_as_dict(perf)}
  base = (CPU_DEFAULTS if platform == 'cpu' and num_devices == 1
          else STOCK)
  out = dict(full)
  for key in CHOICES:
    if key != 'host_malloc' and full[key] == 'auto':
      out[key] = base[key]
  if platform != 'cpu':  # CPU-only kernels
    out['cpu_gemm'] = 'off'
  return out


def model_overrides(perf: Mapping[str, Any], platform: str,
                    num_devices: int = 1,
                    model: Optional[Any] = None) -> dict[str, Any]:
  """Constructor kwargs of the hooks `perf` asks for (module doc).

  `model`: a registry name or a module class; only the hooks it has are
  returned (None: every hook asked for). Stock choices are left out, so
  the stock configuration gives `{}`.
  """
  # pylint: disable=g-import-not-at-top
  from vit_jax import models
  r = resolve(perf, platform, num_devices)
  out = {}
  if r['cpu_gemm'] == 'on':
    from vit_jax.perf import cpu_gemm
    out['dot_general'] = cpu_gemm.dot_general
  if r['attention'] != 'einsum':
    from vit_jax.perf import attention
    if r['attention'] == 'cudnn':
      out['attention_fn'] = attention.cudnn(r['cudnn_seq_multiple'])
    elif r['attention'] == 'xla':
      out['attention_fn'] = attention.xla_dot_product
    else:
      bmm = None
      if r['cpu_gemm'] == 'on':
        from vit_jax.perf import cpu_gemm
        bmm = cpu_gemm.batched_matmul
      out['attention_fn'] = attention.custom_grad(bmm)
  if r['conv'] != 'xla':
    from vit_jax.perf import conv
    out['conv_general_dilated'] = conv.make(r['conv'])
  if r['group_norm'] == 'two_stage':
    from vit_jax.perf import group_norm
    out['group_norm_cls'] = group_norm.TwoStageGroupNorm
  if r['weight_std'] == 'custom_grad':
    from vit_jax.perf import weight_std
    out['weight_standardize'] = weight_std.weight_standardize
  if model is not None:
    cls = models.model_kwargs(model)[0] if isinstance(model, str) else model
    fields = {f.name for f in dataclasses.fields(cls)}
    out = {k: v for k, v in out.items() if k in fields}
  return out


def microbatches(perf: Mapping[str, Any], kind: str, batch: int,
                 devices=None, resolution: Optional[int] = None) -> int:
  """Independent micro-batches per step of `kind` ('infer' | 'train') for
  `config.perf.microbatches` (0: automatic; `perf.microbatch.resolve`)."""
  from vit_jax.perf import microbatch  # pylint: disable=g-import-not-at-top
  validate(perf)
  k = _as_dict(perf).get('microbatches', defaults()['microbatches'])
  return microbatch.resolve(k, kind, batch, devices, resolution)
