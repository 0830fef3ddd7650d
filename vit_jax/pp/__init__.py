"""Preprocessing ops for the tf.data input pipeline, composed by pp strings.

    fn = pp.build('decode|resize(160)|random_crop(128)|flip_lr|'
                  'value_range(-1,1)')
    image = fn(image_or_jpeg_bytes, seed)   # seed: int32 [2]

See `registry` for the string syntax and `ops_image` for the ops.
"""

from vit_jax.pp import ops_image  # noqa: F401  (registers the ops)
from vit_jax.pp.registry import build, parse, OPS  # noqa: F401
