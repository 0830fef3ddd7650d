"""Small image folders decoded once into memory (`dataset='inmemory:PATH'`).

Implements the input contract of `vit_jax.input_pipeline` (same functions,
same batches) for datasets that fit in RAM as uint8 arrays, such as the
60,000 32x32 CIFAR-10 JPEGs of `{train,test}/<class>/<file>`: decoding happens
once (PIL), augmentation runs in numpy per batch. It is what the CPU runs of
docs/training.md used; `input_pipeline` (tf.data) serves tfds and large
folders. `inmemory:digits` is scikit-learn's bundled 8x8 digits (offline),
split 1,500 train / 297 test with a fixed permutation.

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
from vit_jax import dataset_info as dataset_info_lib
from vit_jax.pp import syntax

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
  images = np.round(d.images / 16 * 255).astype(np.uint8)
  images = np.repeat(images[..., None], 3, axis=-1)
  order = np.random.default_rng(0).permutation(len(images))
  splits = {'train': order[:-DIGITS_NUM_TEST], 'test': order[-DIGITS_NUM_TEST:]}
  if split not in splits:
    raise ValueError(f'inmemory:digits has splits train, test; got {split!r}')
  idx = np.sort(splits[split])
  return images[idx], d.target[idx].astype(np.int32), tuple(
      str(i) for i in range(10))


def _root(data) -> str:
  path = data.dataset[len(PREFIX):]
  if path == DIGITS:
    return DIGITS
  if not os.path.isdir(path):
    raise ValueError(f'config.data.dataset={data.dataset!r}: {path} is not a '
                     'directory with {train,test}/<class>/<file> images')
  return path


@functools.lru_cache(maxsize=4)
def _load_split(path: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """(images uint8 [N, H, W, 3], labels int32 [N], class names)."""
  if path.startswith(DIGITS + os.sep):
    return _load_digits(path[len(DIGITS) + 1:])
  if not os.path.isdir(path):
    raise ValueError(f'image folder split {path} does not exist')
  classes = tuple(sorted(d for d in os.listdir(path)
                         if os.path.isdir(os.path.join(path, d))))
  if not classes:
    raise ValueError(f'{path} has no class subfolders')
  images, labels = [], []
  for i, c in enumerate(classes):
    for f in sorted(os.listdir(os.path.join(path, c))):
      with Image.open(os.path.join(path, c, f)) as im:
        images.append(np.asarray(im.convert('RGB')))
      labels.append(i)
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise ValueError(f'{path}: images of different sizes {sorted(shapes)[:3]}'
                     ' are not supported by inmemory: datasets')
  return np.stack(images), np.asarray(labels, np.int32), classes


def _split_path(data, split: str) -> str:
  return os.path.join(_root(data), split)


def dataset_info(data) -> DatasetInfo:
  tr_images, _, classes = _load_split(_split_path(data, data.train_split))
  ev_images, _, _ = _load_split(_split_path(data, data.eval_split))
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
  images, labels, _ = _load_split(_split_path(data, data.train_split))
  ops = parse_pp(data.pp_train)
  n = len(images)
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
    yield {'image': np.stack([_apply(ops, images[i], r)
                              for i, r in zip(idx, rngs)]),
           'label': labels[idx]}
    step += 1


def eval_iterator(data, *, global_batch_size: int,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[dict]:
  """One pass in file order; the last batch padded with mask False."""
  images, labels, _ = _load_split(_split_path(data, data.eval_split))
  ops = parse_pp(data.pp_eval)
  sl = _shard(process_index, process_count, global_batch_size)
  rng = np.random.default_rng(0)  # eval ops are deterministic
  for start in range(0, len(images), global_batch_size):
    idx = np.arange(start, start + global_batch_size)
    mask = idx < len(images)
    idx = np.where(mask, idx, 0)[sl]
    yield {'image': np.stack([_apply(ops, images[i], rng) for i in idx]),
           'label': labels[idx], 'mask': mask[sl]}
