"""tf.data input: tfds datasets, image folders and the embedded digits.

`config.data.dataset` picks the source:
  a tfds name        e.g. 'cifar10', 'oxford_iiit_pet', 'imagenet2012', with
                     tfds split strings ('train[:98%]'), `tfds_data_dir` and
                     `tfds_manual_dir` honoured;
  'folder:/path'     (or an existing directory) laid out
                     {train,test}/<class>/<file>, splits are subfolder names,
                     every split labelled through the training split's
                     classes, image files only (`image_folder`), decoded with
                     the pixels of `images.decode_rgb` (`tf_decode`);
  'digits'           scikit-learn's bundled 1,797 8x8 handwritten digits
                     (offline; fixed 1,500 / 297 split, as `inmemory:digits`).
Preprocessing is a pp string (`vit_jax.data.pp`). Each process reads only its own
shard (`tfds.split_for_jax_process` / every process_count-th file) and yields
its slice of the global batch as numpy arrays; the trainer assembles the global
`jax.Array`.

Determinism: epoch e is a shuffle of a fixed file order seeded by (seed, e),
and the augmentation of the k-th example is seeded by (seed, k), so
`train_iterator(start_step=s)` yields exactly what an uninterrupted iterator
yields from its s-th batch on (whole epochs are not replayed; examples of the
current epoch are skipped before augmentation).

Cache (`data.cache`): the train split is kept in memory after decoding
(folders decode as they read; tfds at the `decode` pp op), so later epochs
neither read nor decode files; only the random ops run per step. The eval
split is cached after its whole (deterministic) pp. Needs memory for the
decoded split: 150 MB for CIFAR-10, far too much for ImageNet (set
cache=False there).

Batches: {'image': float32 [local_batch, H, W, 3], 'label': int32
[local_batch]} (+ 'mask': bool [local_batch] in eval, False on padding).
An image file that cannot be read stops the iterator with one
`images.ImageError` line naming it.
"""

import math
import os
import sys
from typing import Iterator, Optional

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax.data import dataset_info as dataset_info_lib
from vit_jax.data import image_folder
from vit_jax.data import images
from vit_jax.data import pp
from vit_jax.data import tf_decode

tf.config.set_visible_devices([], 'GPU')  # keep TF off accelerators

FOLDER = 'folder:'
DIGITS = 'digits'
_NO_SEED = tf.zeros([2], tf.int32)  # for deterministic ops
# Cached eval datasets (decoded images in memory) and their sources, by
# config and process.
_EVAL_CACHE: dict[tuple, tuple[tf.data.Dataset, object]] = {}


def _map(ds: tf.data.Dataset, fn) -> tf.data.Dataset:
  """Parallel, order-keeping map of plain TF code (no autograph)."""
  return ds.map(tf.autograph.experimental.do_not_convert(fn),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@tf.autograph.experimental.do_not_convert
def _plus_one(count, example):
  del example
  return count + 1


DatasetInfo = dataset_info_lib.DatasetInfo


def _procs(process_index, process_count) -> tuple[int, int]:
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


class _Folder:
  """ROOT/{split}/<class>/<file> (`image_folder`: the training split's class
  map, image files only), decoded with the pixels of `images.decode_rgb`
  (predict's, `inmemory:`'s; every PIL format and mode, values scaled) by
  `tf_decode`.

  An unreadable file is named in one `ImageError` line (`_batches`): PIL's
  failures are recorded in `errors` (the element dropped), TF's are found
  by `unreadable`.
  """

  def __init__(self, root: str, train_split: str):
    if not os.path.isdir(root):
      raise ValueError(f'config.data.dataset: image folder {root} does not '
                       'exist (expected {train,test}/<class>/<file>)')
    self.root, self.train_split = root, train_split
    self.errors: list[str] = []
    self._read: list[str] = []  # the files of the datasets made by `read`

  def classes(self, split):
    del split  # every split is labelled through the training split's classes
    return image_folder.class_names(self.root, self.train_split)

  def _split(self, split) -> image_folder.Split:
    return image_folder.list_split(self.root, split, self.classes(split),
                                   self.train_split)

  def num_examples(self, split):
    return len(self._split(split).files)

  def read(self, split, pi, pc) -> tf.data.Dataset:
    """(uint8 [H, W, 3], int32 label) of this process's files."""
    s = self._split(split)
    # A fixed interleaving of the classes (files are listed class by class,
    # which a shuffle buffer smaller than a class could not undo).
    order = np.random.default_rng(0).permutation(len(s.files))[pi::pc]
    files = [s.files[i] for i in order]
    self._read += files
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(files, tf.string), s.labels[order]))
    errors = self.errors
    ds = _map(ds, lambda path, label: (*tf_decode.decode(path, errors),
                                       label))
    ds = ds.filter(tf.autograph.experimental.do_not_convert(
        lambda image, ok, label: ok))
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(files)))
    return _map(ds, lambda image, ok, label: (image, label))

  def unreadable(self, error: Exception) -> Optional[str]:
    """The one-line message naming the file behind a TF `error` of reading
    or JPEG decoding, else None (e.g. a pp op's error: no file to find)."""
    if not (isinstance(error, (tf.errors.NotFoundError,
                               tf.errors.PermissionDeniedError)) or
            'jpeg' in str(error).lower()):
      return None
    return tf_decode.find_unreadable(self._read, error)


class _Digits:
  """scikit-learn's digits, uint8 RGB 8x8 (shared with `inmemory:digits`)."""

  errors = ()  # in-memory arrays: nothing to fail on

  def unreadable(self, error):
    del error
    return None

  def _load(self, split):
    # pylint: disable=g-import-not-at-top,protected-access
    from vit_jax.data import inmemory
    return inmemory._load_digits(split)

  def classes(self, split):
    return self._load(split)[2]

  def num_examples(self, split):
    return len(self._load(split)[0])

  def read(self, split, pi, pc):
    images, labels, _ = self._load(split)
    return tf.data.Dataset.from_tensor_slices((images[pi::pc],
                                               labels[pi::pc]))


class _Tfds:
  """A tfds dataset with 'image' and 'label' features; the builder's label
  names are one fixed map for every split."""

  errors = ()  # decode errors surface as tf.errors from tfds' own records

  def unreadable(self, error):
    del error
    return None

  def __init__(self, name, data_dir, manual_dir):
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(
          f'config.data.dataset={name!r}: not a tfds dataset; use a tfds '
          "name (e.g. cifar10), 'folder:/path' or 'digits'") from e
    if not tf.io.gfile.exists(
        os.path.join(self.builder.data_dir, 'dataset_info.json')):
      print(f'tfds: {name} is not prepared in {self.builder.data_dir}; '
            'downloading and preparing it (set config.data.tfds_data_dir to '
            'a prepared copy to skip)', file=sys.stderr, flush=True)
    try:
      self.builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f'tfds dataset {name!r} is not prepared in '
          f'{self.builder.data_dir} and could not be downloaded or built '
          f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); set '
          'config.data.tfds_data_dir to a prepared copy or run once with '
          'internet access') from e

  def classes(self, split):
    del split
    return tuple(self.builder.info.features['label'].names)

  def num_examples(self, split):
    try:
      return self.builder.info.splits[split].num_examples
    except KeyError:  # no split metadata (e.g. tfds.testing.mock_data)
      ds = self.builder.as_dataset(split=split)
      n = int(ds.cardinality())
      return n if n >= 0 else int(ds.reduce(0, _plus_one))

  def read(self, split, pi, pc):
    split = tfds.split_for_jax_process(split, process_index=pi,
                                       process_count=pc)
    ds = self.builder.as_dataset(
        split=split, shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()})
    return _map(ds, lambda ex: (ex['image'],
                                tf.cast(ex['label'], tf.int32)))


def _source(data):
  name = data.dataset
  if name == DIGITS:
    return _Digits()
  if name.startswith(FOLDER):
    return _Folder(name[len(FOLDER):], data.train_split)
  if os.path.isdir(name):
    return _Folder(name, data.train_split)
  return _Tfds(name, data.tfds_data_dir, data.tfds_manual_dir)


def dataset_info(data) -> DatasetInfo:
  src = _source(data)
  classes = src.classes(data.train_split)
  return DatasetInfo(len(classes), src.num_examples(data.train_split),
                     src.num_examples(data.eval_split), classes)


def _options() -> tf.data.Options:
  o = tf.data.Options()
  o.deterministic = True
  o.experimental_optimization.map_parallelization = True
  return o


def _local_batch(global_batch_size, pc) -> int:
  if global_batch_size % pc:
    raise ValueError(f'global batch {global_batch_size} is not divisible by '
                     f'{pc} processes')
  return global_batch_size // pc


def _split_decode(pp_string: str):
  """(decode fn or None, fn of the remaining ops) of a pp string."""
  ops = pp.parse(pp_string)
  if ops and ops[0][0] == 'decode':
    return pp.build_ops(ops[:1]), pp.build_ops(ops[1:])
  return None, pp.build_ops(ops)


def _batches(ds: tf.data.Dataset, src) -> Iterator[dict]:
  """numpy batches of `ds`; a file the source `src` failed to read is raised
  as one `images.ImageError` line naming it, before any later batch."""
  it = iter(tfds.as_numpy(ds.with_options(_options())))
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      message = src.errors[0] if src.errors else src.unreadable(e)
      if message:
        raise images.ImageError(message) from None
      raise
    if src.errors:
      raise images.ImageError(src.errors[0])
    yield batch


def _count(ds: tf.data.Dataset) -> int:
  n = int(ds.cardinality())
  return n if n >= 0 else int(ds.reduce(0, _plus_one))


def train_iterator(data, *, global_batch_size: int, seed: int,
                   start_step: int = 0, process_index: Optional[int] = None,
                   process_count: Optional[int] = None) -> Iterator[dict]:
  """Infinite shuffled, augmented batches of this process (module doc).

  Epoch e of this process is its shard shuffled with a buffer of
  `data.shuffle_buffer` seeded by (seed, process, e); example k of the
  stream (counted from the start of training) is augmented with the seed
  (seed + process, k). Resuming at `start_step` starts at the right epoch and
  skips only the examples of that epoch already consumed.

  Yields:
    {'image': float32 [local_batch, H, W, 3], 'label': int32 [local_batch]},
    local_batch = global_batch_size // process_count.
  """
  pi, pc = _procs(process_index, process_count)
  local = _local_batch(global_batch_size, pc)
  decode, fn = _split_decode(data.pp_train)
  src = _source(data)
  base = src.read(data.train_split, pi, pc)
  if decode is not None:  # decode once, before the cache
    base = _map(base, lambda image, label: (decode(image, _NO_SEED), label))
  if data.cache:
    base = base.cache()  # decoded images in memory after the first epoch
  n = _count(base)
  if n < local:
    raise ValueError(f'{data.dataset} {data.train_split}: {n} examples per '
                     f'process, fewer than the local batch {local}')
  first = start_step * local
  epoch0 = first // n

  def epoch(e):
    shuffle_seed = ((seed * 1_000_003 + pi) * 1_000_033 + e) % (2**62)
    shuffled = base.shuffle(data.shuffle_buffer, seed=shuffle_seed,
                            reshuffle_each_iteration=False)
    return tf.data.Dataset.zip((tf.data.Dataset.range(e * n, (e + 1) * n),
                                shuffled))
  ds = tf.data.Dataset.range(epoch0, 2**62).flat_map(epoch)
  ds = ds.skip(first - epoch0 * n)

  def prep(k, example):
    image, label = example
    s = tf.stack([tf.cast(seed + pi, tf.int32),
                  tf.cast(k % (2**31 - 1), tf.int32)])
    return {'image': fn(image, s), 'label': label}
  ds = _map(ds, prep)
  ds = ds.batch(local, drop_remainder=True).prefetch(data.prefetch)
  yield from _batches(ds, src)


def eval_iterator(data, *, global_batch_size: int,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[dict]:
  """One pass over this process's shard of the eval split, padded.

  Yields:
    {'image': float32 [local_batch, H, W, 3], 'label': int32 [local_batch],
    'mask': bool [local_batch]} (mask False on the padding of the last
    batches); every process yields ceil(ceil(N / process_count) /
    local_batch) batches.
  """
  pi, pc = _procs(process_index, process_count)
  local = _local_batch(global_batch_size, pc)
  src = _source(data)
  n = src.num_examples(data.eval_split)
  num_batches = math.ceil(math.ceil(n / pc) / local)  # same on every process
  decode, fn = _split_decode(data.pp_eval)
  # The train split is in the key: folder labels follow its classes.
  key = (data.dataset, data.train_split, data.eval_split, data.pp_eval,
         data.tfds_data_dir, pi, pc)
  if data.cache and key in _EVAL_CACHE:
    ds, src = _EVAL_CACHE[key]
  else:
    ds = src.read(data.eval_split, pi, pc)
    if decode is not None:
      ds = _map(ds, lambda image, label: (decode(image, _NO_SEED), label))
    if data.cache:  # decoded uint8, kept for every later evaluation
      ds = ds.cache()
      _EVAL_CACHE[key] = (ds, src)
  ds = _map(ds, lambda image, label: {'image': fn(image, _NO_SEED),
                                      'label': label, 'mask': True})
  pad = _map(ds.take(1), lambda ex: {**ex, 'mask': False}).repeat()
  ds = ds.concatenate(pad).take(num_batches * local).batch(local)
  yield from _batches(ds.prefetch(data.prefetch), src)


def _main(argv=None):
  """Measures input img/s alone: `python -m vit_jax.data.input_pipeline -h`."""
  import argparse  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from vit_jax import config_lib  # pylint: disable=g-import-not-at-top
  common = config_lib.import_config('common')
  p = argparse.ArgumentParser(description=_main.__doc__)
  p.add_argument('--dataset', default=f'folder:{common.SHARED_DATA}/cifar10')
  p.add_argument('--split', default='train')
  p.add_argument('--pp', default='decode|resize(146)|random_crop(128)|'
                 'flip_lr|value_range(-1,1)')
  p.add_argument('--batch_size', type=int, default=256)
  p.add_argument('--steps', type=int, default=400)
  p.add_argument('--cache', type=int, default=1)
  p.add_argument('--skip_first_epoch', type=int, default=1,
                 help='time only batches after the first epoch')
  a = p.parse_args(argv)
  data = common.data_config(dataset=a.dataset, train_split=a.split,
                            pp_train=a.pp, cache=bool(a.cache))
  n = dataset_info(data).num_train
  warm = -(-n // a.batch_size) if a.skip_first_epoch else 2
  it = train_iterator(data, global_batch_size=a.batch_size, seed=0,
                      process_index=0, process_count=1)
  t0 = time.perf_counter()
  for i in range(warm + a.steps):
    if i == warm:
      t_first, t0 = time.perf_counter() - t0, time.perf_counter()
      print(f'first {warm} batches (read, decode{", cache" * a.cache}): '
            f'{warm * a.batch_size / t_first:.0f} img/s', flush=True)
    b = next(it)
    if i > warm and (i - warm) % 100 == 0:
      print(f'  {i - warm} timed batches', flush=True)
  dt = time.perf_counter() - t0
  print(f'{a.dataset} {a.pp} batch {a.batch_size} cache={a.cache}: '
        f'{a.steps * a.batch_size / dt:.0f} img/s over {a.steps} batches, '
        f'{b["image"].shape} {b["image"].dtype}')


if __name__ == '__main__':
  _main()
