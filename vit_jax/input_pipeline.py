"""tf.data input: tfds datasets, image folders and the embedded digits.

`config.data.dataset` picks the source:
  a tfds name        e.g. 'cifar10', 'oxford_iiit_pet', 'imagenet2012', with
                     tfds split strings ('train[:98%]'), `tfds_data_dir` and
                     `tfds_manual_dir` honoured;
  'folder:/path'     (or an existing directory) laid out
                     {train,test}/<class>/<file>, splits are subfolder names;
  'digits'           scikit-learn's bundled 1,797 8x8 handwritten digits
                     (offline; fixed 1,500 / 297 split, as `inmemory:digits`).
Preprocessing is a pp string (`vit_jax.pp`). Each process reads only its own
shard (`tfds.split_for_jax_process` / every process_count-th file) and yields
its slice of the global batch as numpy arrays; the trainer assembles the global
`jax.Array`.

Determinism: the example order is a seeded shuffle of a fixed file order, and
the augmentation of the k-th example is seeded by (seed, k), so
`train_iterator(start_step=s)` yields exactly what an uninterrupted iterator
yields from its s-th batch on (examples are skipped before decoding).

Batches: {'image': float32 [local_batch, H, W, 3], 'label': int32
[local_batch]} (+ 'mask': bool [local_batch] in eval, False on padding).
"""

import dataclasses
import math
import os
from typing import Iterator, Optional

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax import pp

tf.config.set_visible_devices([], 'GPU')  # keep TF off accelerators

FOLDER = 'folder:'
DIGITS = 'digits'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train: int
  num_eval: int
  class_names: tuple[str, ...]


def _procs(process_index, process_count) -> tuple[int, int]:
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


class _Folder:
  """{split}/<class>/<file> under a root directory."""

  def __init__(self, root: str):
    if not os.path.isdir(root):
      raise ValueError(f'config.data.dataset: image folder {root} does not '
                       'exist (expected {train,test}/<class>/<file>)')
    self.root = root

  def _files(self, split: str):
    d = os.path.join(self.root, split)
    if not os.path.isdir(d):
      have = sorted(e for e in os.listdir(self.root)
                    if os.path.isdir(os.path.join(self.root, e)))
      raise ValueError(f'split {split!r}: no folder {d}; splits here: '
                       f'{", ".join(have) or "none"}')
    classes = sorted(c for c in os.listdir(d)
                     if os.path.isdir(os.path.join(d, c)))
    if not classes:
      raise ValueError(f'{d} has no class subfolders')
    files, labels = [], []
    for i, c in enumerate(classes):
      names = sorted(os.listdir(os.path.join(d, c)))
      files += [os.path.join(d, c, f) for f in names]
      labels += [i] * len(names)
    return files, labels, tuple(classes)

  def classes(self, split):
    return self._files(split)[2]

  def num_examples(self, split):
    return len(self._files(split)[0])

  def read(self, split, pi, pc) -> tf.data.Dataset:
    files, labels, _ = self._files(split)
    # A fixed interleaving of the classes (files are listed class by class,
    # which a shuffle buffer smaller than a class could not undo).
    order = np.random.default_rng(0).permutation(len(files))[pi::pc]
    ds = tf.data.Dataset.from_tensor_slices(
        ([files[i] for i in order], np.asarray(labels, np.int32)[order]))
    return ds.map(lambda f, l: (tf.io.read_file(f), l))


class _Digits:
  """scikit-learn's digits, uint8 RGB 8x8 (shared with `inmemory:digits`)."""

  def _load(self, split):
    from vit_jax import inmemory_input  # pylint: disable=g-import-not-at-top
    return inmemory_input._load_digits(split)  # pylint: disable=protected-access

  def classes(self, split):
    return self._load(split)[2]

  def num_examples(self, split):
    return len(self._load(split)[0])

  def read(self, split, pi, pc):
    images, labels, _ = self._load(split)
    return tf.data.Dataset.from_tensor_slices((images[pi::pc],
                                               labels[pi::pc]))


class _Tfds:
  """A tfds dataset with 'image' and 'label' features."""

  def __init__(self, name, data_dir, manual_dir):
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(
          f'config.data.dataset={name!r}: not a tfds dataset; use a tfds '
          "name (e.g. cifar10), 'folder:/path' or 'digits'") from e
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
      return n if n >= 0 else int(ds.reduce(0, lambda c, _: c + 1))

  def read(self, split, pi, pc):
    split = tfds.split_for_jax_process(split, process_index=pi,
                                       process_count=pc)
    ds = self.builder.as_dataset(
        split=split, shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: (ex['image'], tf.cast(ex['label'], tf.int32)))


def _source(data):
  name = data.dataset
  if name == DIGITS:
    return _Digits()
  if name.startswith(FOLDER):
    return _Folder(name[len(FOLDER):])
  if os.path.isdir(name):
    return _Folder(name)
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


def train_iterator(data, *, global_batch_size: int, seed: int,
                   start_step: int = 0, process_index: Optional[int] = None,
                   process_count: Optional[int] = None) -> Iterator[dict]:
  """Infinite shuffled, augmented batches of this process (module doc)."""
  pi, pc = _procs(process_index, process_count)
  local = _local_batch(global_batch_size, pc)
  fn = pp.build(data.pp_train)
  ds = _source(data).read(data.train_split, pi, pc)
  if data.cache:
    ds = ds.cache()  # encoded bytes / small arrays, not decoded images
  ds = ds.repeat().shuffle(data.shuffle_buffer, seed=seed + pi,
                           reshuffle_each_iteration=True)
  ds = ds.enumerate().skip(start_step * local)

  def prep(k, example):
    image, label = example
    s = tf.stack([tf.cast(seed + pi, tf.int32),
                  tf.cast(k % (2**31 - 1), tf.int32)])
    return {'image': fn(image, s), 'label': label}
  ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local, drop_remainder=True).prefetch(data.prefetch)
  yield from tfds.as_numpy(ds.with_options(_options()))


def eval_iterator(data, *, global_batch_size: int,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[dict]:
  """One pass over this process's shard of the eval split, padded (mask)."""
  pi, pc = _procs(process_index, process_count)
  local = _local_batch(global_batch_size, pc)
  src = _source(data)
  n = src.num_examples(data.eval_split)
  num_batches = math.ceil(math.ceil(n / pc) / local)  # same on every process
  fn = pp.build(data.pp_eval)
  zero_seed = tf.zeros([2], tf.int32)
  ds = src.read(data.eval_split, pi, pc).map(
      lambda image, label: {'image': fn(image, zero_seed), 'label': label,
                            'mask': True},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if data.cache:
    ds = ds.cache()
  pad = ds.take(1).map(lambda ex: {**ex, 'mask': False}).repeat()
  ds = ds.concatenate(pad).take(num_batches * local).batch(local)
  yield from tfds.as_numpy(ds.prefetch(data.prefetch).with_options(
      _options()))
