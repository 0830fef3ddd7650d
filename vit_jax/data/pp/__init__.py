"""Preprocessing ops for the tf.data input pipeline, composed by pp strings.

    fn = pp.build('decode|resize(160)|random_crop(128)|flip_lr|'
                  'value_range(-1,1)')
    image = fn(image_or_jpeg_bytes, seed)   # seed: int32 [2]

See `syntax` for the string syntax (TensorFlow-free), `registry` for the op
registry and `ops_image` for the ops. TensorFlow is imported on first use of
`build`, `build_ops`, `parse` or `OPS`, so `vit_jax.data.pp.syntax` stays light.
"""

_EXPORTS = ('build', 'build_ops', 'parse', 'OPS')


def __getattr__(name):
  if name in _EXPORTS:
    # pylint: disable=g-import-not-at-top
    from vit_jax.data.pp import ops_image  # noqa: F401  (registers the ops)
    from vit_jax.data.pp import registry
    return getattr(registry, name)
  raise AttributeError(f'module vit_jax.data.pp has no attribute {name!r}')
