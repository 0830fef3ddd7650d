"""Throughput measurement (`trainer='inference_time'`, as the official code).

    python -m vit_jax.main --config=configs/inference_time.py:B/16 \
        --workdir=/tmp/it
    python -m vit_jax.main --config=configs/inference_time.py:Ti/16 \
        --config.batch_size=8 --config.modes=infer,train --workdir=/tmp/it

The argument after ':' is a model name of the `vit_jax.models` registry.
`vit_jax.perf.inference_time.run` times each mode with `vit_jax.perf.bench` and writes
`inference_time.json` (img/s, FLOPs, MFU, memory, compile time) to workdir.
"""

import ml_collections

from configs import common

# The argument after ':' (`python -m vit_jax.main --help` lists it).
ARGUMENT = 'MODEL_NAME'


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.trainer = 'inference_time'
  c.model_name = arg or 'B/16'
  c.image_size = 224
  c.batch_size = 32
  c.dtype = 'float32'            # float32 | bfloat16 (compute; params fp32)
  c.modes = 'infer'              # comma-separated: infer, train
  c.steps = 5                    # timed steps (median reported)
  c.warmup = 2
  c.remat = False
  # How the steps are computed (vit_jax.perf.hooks), e.g. attention='cudnn'.
  c.perf = common.perf_config()
  c.num_classes = 1000
  # MFU peak in TFLOP/s; None: datasheet bf16 (GPU/TPU) or measured (CPU).
  c.peak_tflops = ml_collections.FieldReference(None, field_type=float)
  return c.lock()
