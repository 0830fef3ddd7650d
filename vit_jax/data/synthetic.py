"""A synthetic dataset (`data.dataset='synthetic'`) with the input contract.

Same functions and batch format as `vit_jax.data.input_pipeline`, no files: each of
10 classes has a fixed random prototype image; an example is its class's
prototype plus Gaussian noise, clipped to [-1, 1]. Batch k of the training
stream is a pure function of (seed, k): the global batch is generated whole
and every process keeps its slice, so any number of processes sees exactly the
same global data (tests of multi-process equivalence and resume rely on
this). The image size is the last size in `data.pp_train` / `pp_eval`.
"""

import re
from typing import Iterator, Optional

import jax
import numpy as np
from vit_jax.data import dataset_info as dataset_info_lib

NUM_CLASSES = 10
NUM_TRAIN = 1024
NUM_EVAL = 200
_SIZE_RE = re.compile(r'(?:resize|random_crop|central_crop|inception_crop)'
                      r'\((\d+)\)')


DatasetInfo = dataset_info_lib.DatasetInfo


def dataset_info(data) -> DatasetInfo:
  del data
  return DatasetInfo(NUM_CLASSES, NUM_TRAIN, NUM_EVAL,
                     tuple(f'class_{i}' for i in range(NUM_CLASSES)))


def _size(pp: str) -> int:
  sizes = _SIZE_RE.findall(pp)
  if not sizes:
    raise ValueError(f'synthetic data: no image size in pp string {pp!r}; '
                     'expected resize(N) or *_crop(N)')
  return int(sizes[-1])


def _examples(rng: np.random.Generator, n: int, size: int):
  protos = np.random.default_rng(1234).uniform(
      -1, 1, (NUM_CLASSES, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
  noise = rng.normal(0, 0.5, (n, size, size, 3)).astype(np.float32)
  images = np.clip(0.5 * protos[labels] + noise, -1, 1)
  return images, labels


def _shard(process_index, process_count, batch: int) -> slice:
  return dataset_info_lib.process_slice(process_index, process_count, batch)


def train_iterator(data, *, global_batch_size: int, seed: int,
                   start_step: int = 0, process_index: Optional[int] = None,
                   process_count: Optional[int] = None) -> Iterator[dict]:
  """Infinite; batch k depends only on (seed, k); yields the local slice."""
  size = _size(data.pp_train)
  sl = _shard(process_index, process_count, global_batch_size)
  step = start_step
  while True:
    rng = np.random.default_rng([seed, step])
    images, labels = _examples(rng, global_batch_size, size)
    yield {'image': images[sl], 'label': labels[sl]}
    step += 1


def eval_iterator(data, *, global_batch_size: int,
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Iterator[dict]:
  """One pass over NUM_EVAL examples, the last batch padded (mask False)."""
  size = _size(data.pp_eval)
  sl = _shard(process_index, process_count, global_batch_size)
  images, labels = _examples(np.random.default_rng(99), NUM_EVAL, size)
  for start in range(0, NUM_EVAL, global_batch_size):
    im = images[start:start + global_batch_size]
    lb = labels[start:start + global_batch_size]
    mask = np.ones(global_batch_size, bool)
    pad = global_batch_size - len(lb)
    if pad:
      mask[-pad:] = False
      im = np.concatenate([im, np.zeros((pad,) + im.shape[1:], im.dtype)])
      lb = np.concatenate([lb, np.zeros(pad, lb.dtype)])
    yield {'image': im[sl], 'label': lb[sl], 'mask': mask[sl]}
