"""Reading real images for the analyses: eval preprocessing, labels, folders.

Images come out as uint8 [B, H, W, 3] (compact; 1,000 photos at 224 px are
150 MB) and `to_model` maps them to the models' float range [-1, 1].

Eval preprocessing: `vit_jax.data.images`' one rule (shorter side to
floor(resolution / 0.9) px, bicubic, then a `resolution` x `resolution`
center crop), unless `resize` says otherwise. Images already of size
`resolution` (CIFAR-10 at 32 px) are used as they are.

The real data folder is $VIT_JAX_SHARED_DATA, default `../shared/data` next to
the repository (see its README.md): `imagenet_samples/<wnid>_<name>.JPEG`
labelled by the wnid's line in `imagenet_labels/imagenet_synsets.txt`, and
`cifar10/{train,test}/<class>/*.jpg`.
"""

import os
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np

from vit_jax.data import images
from vit_jax.analysis import validate

IMAGE_EXTENSIONS = images.IMAGE_EXTENSIONS
REPO = pathlib.Path(__file__).resolve().parents[2]


def shared_data_dir() -> pathlib.Path:
  """$VIT_JAX_SHARED_DATA; else ../shared/data next to the repository, or,
  when the package is installed (no repository around it), next to the
  working directory (the rule of configs/common.py)."""
  if 'VIT_JAX_SHARED_DATA' in os.environ:
    return pathlib.Path(os.environ['VIT_JAX_SHARED_DATA'])
  root = REPO if (REPO / 'configs').is_dir() else pathlib.Path.cwd()
  return root.parent / 'shared' / 'data'


def list_images(paths: Sequence[str]) -> list[str]:
  """Files as given, directories expanded (sorted, image extensions)."""
  try:
    return images.list_images(paths)
  except images.ImageError as e:
    raise validate.AnalysisError(f'image missing: {e}') from e


def load_image(path: str, resolution: int = 224,
               resize: Optional[int] = None) -> np.ndarray:
  """Eval preprocessing (module doc) -> uint8 [resolution, resolution, 3].

  `resize` defaults to `images.resize_size(resolution)` (248 for 224).
  """
  try:
    return images.load_image(path, resolution, resize=resize)
  except images.ImageError as e:
    raise validate.AnalysisError(str(e)) from e


def load_images(paths: Sequence[str], resolution: int = 224,
                resize: Optional[int] = None,
                progress: bool = True) -> np.ndarray:
  """`load_image` over many files -> uint8 [B, H, W, 3], with progress."""
  out = np.zeros((len(paths), resolution, resolution, 3), np.uint8)
  for i, p in enumerate(paths):
    out[i] = load_image(p, resolution, resize)
    if progress and (i + 1) % 200 == 0:
      print(f'  decoded {i + 1}/{len(paths)} images', file=sys.stderr,
            flush=True)
  return out


def to_model(images_uint8) -> np.ndarray:
  """uint8 [..., 3] -> float32 in [-1, 1]."""
  return images.to_model_range(images_uint8)


def imagenet_samples(root: Optional[str] = None,
                     limit: Optional[int] = None) -> tuple[list[str],
                                                           np.ndarray]:
  """(paths, labels [B] int32) of the ImageNet sample photos, sorted by name."""
  root = pathlib.Path(root) if root else shared_data_dir()
  img_dir = root / 'imagenet_samples'
  synsets = root / 'imagenet_labels' / 'imagenet_synsets.txt'
  for p in (img_dir, synsets):
    if not p.exists():
      raise validate.AnalysisError(f'image missing: {p} does not exist (set '
                                   'VIT_JAX_SHARED_DATA)')
  wnids = {w.strip(): i for i, w in enumerate(open(synsets)) if w.strip()}
  paths = sorted(str(p) for p in img_dir.iterdir()
                 if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
  labels = []
  for p in paths:
    wnid = os.path.basename(p).split('_')[0]
    if wnid not in wnids:
      raise validate.AnalysisError(f'{p}: wnid {wnid} not in {synsets}')
    labels.append(wnids[wnid])
  return paths, np.asarray(labels, np.int32)


def image_folder(root: str, limit_per_class: Optional[int] = None
                 ) -> tuple[list[str], np.ndarray, list[str]]:
  """(paths, labels, class names) of a `<root>/<class>/<file>` folder.

  Classes are the sorted subfolder names (CIFAR-10: airplane ... truck).
  """
  if not os.path.isdir(root):
    raise validate.AnalysisError(f'image missing: no such folder {root}')
  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise validate.AnalysisError(f'{root} has no class subfolders')
  paths, labels = [], []
  for i, c in enumerate(classes):
    files = sorted(f for f in os.listdir(os.path.join(root, c))
                   if f.lower().endswith(IMAGE_EXTENSIONS))[:limit_per_class]
    paths += [os.path.join(root, c, f) for f in files]
    labels += [i] * len(files)
  return paths, np.asarray(labels, np.int32), classes
