"""Image files decoded inside tf.data with the pixels of `images.decode_rgb`.

JPEGs of 1 or 3 components (CIFAR, ImageNet) decode in TF with libjpeg's
accurate integer IDCT (`dct_method='INTEGER_ACCURATE'`), which gives PIL's
pixels exactly (tested); every other file (PNG, GIF, BMP, WebP, TIFF, CMYK
JPEGs, anything PIL opens) goes to `images.decode_rgb` through
`tf.numpy_function` (slower: Python under the GIL).

Errors: a file PIL cannot read is recorded in the caller's `errors` list and
its element is marked not ok (the reader drops it and raises the message);
a JPEG TF fails on (truncated, corrupt) or a file that cannot be read stops
the pipeline with a TF error that does not name it: `find_unreadable` then
decodes the files again, one by one, to name it.
"""

import io
import sys
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from vit_jax.data import images


def _tf_decodes(contents: tf.Tensor) -> tf.Tensor:
  """bool: a JPEG of 1 (grey) or 3 (YCbCr) components."""
  def components():
    c = tf.image.extract_jpeg_shape(contents)[2]
    return tf.logical_or(tf.equal(c, 1), tf.equal(c, 3))
  return tf.cond(tf.io.is_jpeg(contents), components, lambda: False)


def decode(path: tf.Tensor, errors: list) -> tuple[tf.Tensor, tf.Tensor]:
  """(uint8 [H, W, 3], ok) of the file at `path` (a string tensor); when PIL
  cannot read it, ok is False, the image empty, the message in `errors`."""
  contents = tf.io.read_file(path)

  def with_pil(data, name):
    name = name.decode()
    try:
      return images.decode_rgb(io.BytesIO(data), name=name), True
    except images.ImageError as e:
      errors.append(str(e))
      return np.zeros((0, 0, 3), np.uint8), False

  def pil():
    image, ok = tf.numpy_function(with_pil, [contents, path],
                                  (tf.uint8, tf.bool), stateful=False)
    return tf.ensure_shape(image, [None, None, 3]), tf.ensure_shape(ok, [])

  def jpeg():
    return (tf.io.decode_jpeg(contents, channels=3,
                              dct_method='INTEGER_ACCURATE'),
            tf.constant(True))
  return tf.cond(_tf_decodes(contents), jpeg, pil)


def find_unreadable(paths: Sequence[str], error: Exception) -> Optional[str]:
  """One line naming the first of `paths` that `decode` fails on (read
  again, in parallel; the failing elements are the ones missing), or None.
  """
  print(f'note: decoding stopped ({type(error).__name__}); finding the file '
        f'among {len(paths)}', file=sys.stderr, flush=True)
  scratch = []

  def decoded(path):  # the image's shape: keeps its decoding from pruning
    image, ok = decode(path, scratch)
    return path, ok, tf.shape(image)
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
  ds = ds.map(tf.autograph.experimental.do_not_convert(decoded),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  good = {p.decode() for p, ok, _ in ds.ignore_errors().as_numpy_iterator()
          if ok}
  for p in paths:
    if p not in good:
      try:
        images.decode_rgb(p)
      except images.ImageError as e:
        return str(e)
      try:  # PIL reads it, TF's JPEG decoder does not
        tf.io.decode_jpeg(tf.io.read_file(p), dct_method='INTEGER_ACCURATE')
      except tf.errors.OpError as e:
        return (f'cannot read image {p}: TF\'s JPEG decoder fails '
                f'({e.message.strip().splitlines()[0]}); re-save the file')
  return None
