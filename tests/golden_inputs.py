"""Inputs of the golden cases in tests/fixtures/official (numpy and PIL only).

The fixtures hold logits of google-research/vision_transformer run on these
inputs; the tests rebuild the same inputs here and run our models on them.
Nothing in this module depends on jax, flax or vit_jax, so the inputs do not
change with their versions.

  photos:      `load_photos(dir, names, size)` -> uint8 [N, size, size, 3]
               (PIL: RGB, plain bicubic resize to size x size, no crop);
               `to_model_input` maps it to float32 in [-1, 1] (x / 127.5 - 1).
  parameters:  `random_params({key: shape}, seed)` -> {key: float32 array},
               drawn from one `np.random.RandomState(seed)` in sorted key order.
"""

import hashlib
import pathlib
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

# Golden cases: model name (the official config's and our registry's),
# image size, number of photos (the first of PHOTOS), and either the released
# checkpoint (in the shared data) or the seed of `random_params` for a
# checkpoint written by `vit_jax.checkpoints.npz.save_npz` with `num_classes`.
RELEASED_TI16 = 'ViT-Ti_16-augreg-i21k-ft-i1k-224.npz'
CASES = {
    'ViT-Ti_16@224': dict(model='ViT-Ti_16', size=224, photos=8,
                          checkpoint=RELEASED_TI16),
    'ViT-Ti_16@384': dict(model='ViT-Ti_16', size=384, photos=8,
                          checkpoint=RELEASED_TI16),
    'ViT-B_32': dict(model='ViT-B_32', size=224, photos=4, seed=1,
                     num_classes=10),
    'ViT-S_16-gap-norep': dict(model='ViT-S_16-gap-norep', size=224,
                               photos=4, seed=2, num_classes=10),
    'R50+ViT-B_16': dict(model='R50+ViT-B_16', size=224, photos=2, seed=3,
                         num_classes=10),
    'Mixer-B_16': dict(model='Mixer-B_16', size=224, photos=2, seed=4,
                       num_classes=10),
}

# Shared ImageNet photos (imagenet_samples/), in batch order.
PHOTOS = (
    'n01440764_tench.JPEG',
    'n02099601_golden_retriever.JPEG',
    'n02123045_tabby.JPEG',
    'n02391049_zebra.JPEG',
    'n04285008_sports_car.JPEG',
    'n07873807_pizza.JPEG',
    'n09472597_volcano.JPEG',
    'n04487394_trombone.JPEG',
)


def load_photos(photo_dir: pathlib.Path, names: Sequence[str],
                size: int) -> np.ndarray:
  """uint8 [N, size, size, 3]: each photo as RGB, resized bicubically."""
  return np.stack([
      np.asarray(Image.open(pathlib.Path(photo_dir) / n).convert('RGB')
                 .resize((size, size), Image.BICUBIC)) for n in names])


def to_model_input(images_u8: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, 3] -> float32 in [-1, 1]."""
  return images_u8.astype(np.float32) / 127.5 - 1


def sha256_of_array(a: np.ndarray) -> str:
  """Digest of dtype, shape and C-order bytes."""
  h = hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode())
  h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def sha256_of_params(flat: Mapping[str, np.ndarray]) -> str:
  """Digest of {key: array} over sorted keys (names, shapes and values)."""
  h = hashlib.sha256()
  for k in sorted(flat):
    h.update(k.encode())
    h.update(sha256_of_array(np.asarray(flat[k])).encode())
  return h.hexdigest()


def _fan_in(key: str, shape: Sequence[int]) -> int:
  """Inputs summed per output: the first axis of attention's query / key /
  value kernels [D, heads, D/heads], all but the last axis otherwise (Dense
  [in, out], attention out [heads, D/heads, D], conv HWIO)."""
  parent = key.split('/')[-2] if '/' in key else ''
  if parent in ('query', 'key', 'value'):
    return int(shape[0])
  return int(np.prod(shape[:-1]))


def random_params(shapes: Mapping[str, Sequence[int]],
                  seed: int) -> dict[str, np.ndarray]:
  """Deterministic float32 parameters for {'a/b/kernel': shape, ...}.

  Standard normals z are drawn from `np.random.RandomState(seed)` key by key
  in sorted order, then scaled so that activations and logits stay O(1) and
  no layer is trivial: `scale` 1 + 0.1 z (norm scales around one), `bias`
  0.05 z, `kernel` z / sqrt(fan_in), anything else (`pos_embedding`, `cls`)
  0.1 z.
  """
  rng = np.random.RandomState(seed)
  out = {}
  for key in sorted(shapes):
    shape = tuple(int(d) for d in shapes[key])
    z = rng.standard_normal(shape)
    leaf = key.split('/')[-1]
    if leaf == 'scale':
      v = 1 + 0.1 * z
    elif leaf == 'bias':
      v = 0.05 * z
    elif leaf == 'kernel':
      v = z / np.sqrt(_fan_in(key, shape))
    else:
      v = 0.1 * z
    out[key] = v.astype(np.float32)
  return out


def random_images(seed: int, n: int, size: int) -> np.ndarray:
  """float32 [n, size, size, 3], uniform in [-1, 1]."""
  rng = np.random.RandomState(seed)
  return rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
