"""Small image folders decoded once into memory (`dataset='inmemory:PATH'`).

Implements the input contract of `vit_jax.data.input_pipeline` (same functions,
same batches) for datasets that fit in RAM as uint8 arrays, such as the
60,000 32x32 CIFAR-10 JPEGs of `{train,test}/<class>/<file>`: decoding happens
once (`images.decode_rgb`, the pixels of predict and `folder:`), augmentation
runs in numpy per batch. Classes and files follow `image_folder`: labels come
from the training split's class folders, image files only. It is what the
CPU runs of docs/training.md used; `input_pipeline` (tf.data) serves tfds
and large folders. `inmemory:digits` is scikit-learn's bundled 8x8 digits
(offline), split 1,500 train / 297 test with a fixed permutation.

Determinism: the order of epoch e is a permutation drawn from (seed, e); the
augmentation of batch k is drawn from (seed, k). Batch k is therefore a pure
function of (seed, k): `start_step=k` resumes exactly, and the global batch is
the same for any number of processes (each keeps its slice).

pp ops (applied in order, '|'-separated): decode (no-op), resize(n),
random_crop(n), central_crop(n), inception_crop(n), flip_lr,
value_range(a,b).
"""

import functools
import os
from typing import Iterator, Optional

import jax
import numpy as np
from PIL import Image
from vit_jax.data import dataset_info as dataset_info_lib
from vit_jax.data import image_folder
from vit_jax.data import images
from vit_jax.data.pp import syntax

PREFIX = 'inmemory:'
PP_OPS = ('decode', 'resize', 'random_crop', 'central_crop', 'inception_crop',
          'flip_lr', 'value_range')


DatasetInfo = dataset_info_lib.DatasetInfo


DIGITS = 'digits'  # 'inmemory:digits': scikit-learn's bundled 8x8 digits
DIGITS_NUM_TEST = 297  # fixed split: 1,500 train / 297 test


def _load_digits(split: str):
  """scikit-learn's 1,797 handwritten digits as uint8 RGB [N, 8, 8, 3]."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_digits()
  pixels = np.round(d.images / 16 * 255).astype(np.uint8)
  pixels = np.repeat(pixels[..., None], 3, axis=-1)
  order = np.random.default_rng(0).permutation(len(pixels))
  splits = {'train': order[:-DIGITS_NUM_TEST], 'test': order[-DIGITS_NUM_TEST:]}
  if split not in splits:
    raise ValueError(f'inmemory:digits has splits train, test; got {split!r}')
  idx = np.sort(splits[split])
  return pixels[idx], d.target[idx].astype(np.int32), tuple(
      str(i) for i in range(10))


def _root(data) -> str:
  path = data.dataset[len(PREFIX):]
  if path == DIGITS:
    return DIGITS
  if not os.path.isdir(path):
    raise ValueError(f'config.data.dataset={data.dataset!r}: {path} is not a '
                     'directory with {train,test}/<class>/<file> images')
  return path


def _load(data, split: str):
  """(images uint8 [N, H, W, 3], labels int32 [N], class names) of a split;
  folder labels follow the training split's classes (`image_folder`)."""
  root = _root(data)
  if root == DIGITS:
    return _load_digits(split)
  classes = image_folder.class_names(root, data.train_split)
  listing = image_folder.list_split(root, split, classes, data.train_split)
  return _decode_all(listing) + (classes,)


@functools.lru_cache(maxsize=4)
def _decode_all(listing: image_folder.Split) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, H, W, 3], labels int32 [N]) of listed files, decoded
  by `images.decode_rgb` (an unreadable file: one line naming it)."""
  decoded = [images.decode_rgb(f) for f in listing.files]
  if not decoded:
    return np.zeros((0, 1, 1, 3), np.uint8), listing.labels
  for f, im in zip(listing.files, decoded):
    if im.shape != decoded[0].shape:
      raise ValueError(
          f'{f} is {im.shape[1]}x{im.shape[0]}, {listing.files[0]} is '
          f'{decoded[0].shape[1]}x{decoded[0].shape[0]}: inmemory: datasets '
          "need one image size (use 'folder:' for mixed sizes)")
  return np.stack(decoded), listing.labels


def dataset_info(data) -> DatasetInfo:
  tr_images, _, classes = _load(data, data.train_split)
  ev_images, _, _ = _load(data, data.eval_split)
  return DatasetInfo(len(classes), len(tr_images), len(ev_images), classes)


def parse_pp(pp: str) -> list[tuple[str, tuple[float, ...]]]:
  """The ops of a pp string (the shared syntax), restricted to PP_OPS."""
  return syntax.parse(pp, PP_OPS)


def _resize(im: np.ndarray, h: int, w: int) -> np.ndarray:
  if im.shape[:2] == (h, w):
    return im
  return np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR))


def _inception_crop(im: np.ndarray, size: int,
                    rng: np.random.Generator) -> np.ndarray:
  """Random area in [5%, 100%], aspect in [3/4, 4/3], resized to size."""
  h, w = im.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(0.05, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(round(np.sqrt(area / aspect)))
    cw = int(round(np.sqrt(area * aspect)))
    if 0 < ch <= h and 0 < cw <= w:
      y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      return _resize(im[y:y + ch, x:x + cw], size, size)
  return _resize(im, size, size)


def _apply(ops, im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One uint8 image [H, W, 3] -> float32 after the pp ops."""
  x = im
  for name, args in ops:
    if name == 'resize':
      x = _resize(x, int(args[0]), int(args[-1]))
    elif name in ('random_crop', 'central_crop'):
      s = int(args[0])
      h, w = x.shape[:2]
      if name == 'random_crop':
        y, xo = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
      else:
        y, xo = (h - s) // 2, (w - s) // 2
      x = x[y:y + s, xo:xo + s]
    elif name == 'inception_crop':
      x = _inception_crop(x, int(args[0]), rng)
    elif name == 'flip_lr':
      if rng.random() < 0.5:
        x = x[:, ::-1]
    elif name == 'value_range':
      lo, hi = args
      x = np.asarray(x, np.float32) * ((hi - lo) / 255.0) + lo
  return np.asarray(x, np.float32)


def _shard(process_index, process_count, batch: int) -> slice:
  return dataset_info_lib.process_slice(process_index, process_count, batch)


def train_iterator(data, *, global_batch_size: int, seed: int,
                   start_step: int = 0, process_index: Optional[int] = None,
                   process_count: Optional[int] = None) -> Iterator[dict]:
  """Infinite shuffled, augmented batches; see the module docstring."""
  pixels, labels, _ = _load(data, data.train_split)
  ops = parse_pp(data.pp_train)
  n = len(pixels)
  sl = _shard(process_index, process_count, global_batch_size)
  perms = {}
  step = start_step
  while True:
    pos = np.arange(step * global_batch_size,
                    (step + 1) * global_batch_size)[sl]
    idx = np.empty(len(pos), np.int64)
    for e in np.unique(pos // n):
      if e not in perms:
        perms = {e: np.random.default_rng([seed, int(e)]).permutation(n)}
      sel = pos // n == e
      idx[sel] = perms[e][pos[sel] % n]
    rngs = np.random.default_rng([seed, step, 1]).spawn(global_batch_size)
    rngs = rngs[sl]
    yield {'image': np.stack([_apply(ops, pixels[i], r)
                              for i, r in zip(idx, rngs)]),
           'label': labels[idx]}
    step += 1


def eval_iterator(data, *, global_batch_size: int,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[dict]:
  """One pass in file order; the last batch padded with mask False."""
  pixels, labels, _ = _load(data, data.eval_split)
  ops = parse_pp(data.pp_eval)
  sl = _shard(process_index, process_count, global_batch_size)
  rng = np.random.default_rng(0)  # eval ops are deterministic
  for start in range(0, len(pixels), global_batch_size):
    idx = np.arange(start, start + global_batch_size)
    mask = idx < len(pixels)
    idx = np.where(mask, idx, 0)[sl]
    yield {'image': np.stack([_apply(ops, pixels[i], rng) for i in idx]),
           'label': labels[idx], 'mask': mask[sl]}
