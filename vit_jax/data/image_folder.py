"""Image folders `ROOT/{split}/<class>/<file>`: one class map, image files.

Shared by the `folder:` (`input_pipeline`) and `inmemory:` readers:
  classes   the non-hidden subfolders of the *training* split, sorted; label
            i is the i-th. Every other split maps its class folders through
            that list, so a split lacking a class (or holding them in another
            order) keeps the training labels. A class folder the training
            split lacks is an error naming it; a training class folder with
            no image files is an error too (its class could never be
            learned; usually a failed copy).
  files     `images.is_image_name` only: image extensions in any case,
            hidden files ('.DS_Store', '._x.jpg') skipped. Other files are
            skipped with one note per split on stderr.
Reading and decoding the files is the readers' business (`images.decode_rgb`).
"""

import dataclasses
import functools
import os
import sys

import numpy as np

from vit_jax.data import images


def _subfolders(d: str) -> list[str]:
  return sorted(e for e in os.listdir(d)
                if not e.startswith('.') and os.path.isdir(os.path.join(d, e)))


def split_dir(root: str, split: str) -> str:
  """ROOT/split, or a one-line error listing the splits there."""
  d = os.path.join(root, split)
  if not os.path.isdir(d):
    raise ValueError(f'split {split!r}: no folder {d}; splits here: '
                     f'{", ".join(_subfolders(root)) or "none"}')
  return d


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity
class Split:
  files: tuple[str, ...]   # paths, class by class, sorted within a class
  labels: np.ndarray       # int32 [len(files)]: index into the class names


def _image_files(class_dir: str) -> tuple[list[str], list[str]]:
  """(sorted image file names, other non-hidden file names) of a folder."""
  with os.scandir(class_dir) as it:
    names = sorted(e.name for e in it if e.is_file())
  return ([f for f in names if images.is_image_name(f)],
          [f for f in names if not f.startswith('.') and
           not images.is_image_name(f)])


def _has_image(class_dir: str) -> bool:
  with os.scandir(class_dir) as it:
    return any(e.is_file() and images.is_image_name(e.name) for e in it)


def class_names(root: str, train_split: str) -> tuple[str, ...]:
  """The class names (label order) of ROOT/train_split (module doc)."""
  d = split_dir(root, train_split)
  classes = _subfolders(d)
  if not classes:
    raise ValueError(f'{d} has no class subfolders (expected '
                     f'{d}/<class>/<image file>)')
  for c in classes:
    if not _has_image(os.path.join(d, c)):
      raise ValueError(
          f'class folder {os.path.join(d, c)} has no images '
          f'({", ".join(images.IMAGE_EXTENSIONS)}): every class of the '
          f'training split {train_split!r} needs one; add images or remove '
          'the folder')
  return tuple(classes)


def list_split(root: str, split: str, classes: tuple[str, ...],
               train_split: str) -> Split:
  """The image files of ROOT/split, labelled through `classes` (the training
  split's class names, `class_names`)."""
  d = split_dir(root, split)
  # Keyed by the folders' modification times: a file added or removed lists
  # again, an unchanged folder is listed (and noted) once.
  stamps = tuple(os.stat(os.path.join(d, c)).st_mtime_ns
                 for c in _subfolders(d))
  return _list(d, split, classes, train_split, stamps)


@functools.lru_cache(maxsize=16)
def _list(d, split, classes, train_split, stamps) -> Split:
  del stamps  # the cache key only
  index = {c: i for i, c in enumerate(classes)}
  files, labels, skipped = [], [], []
  for c in _subfolders(d):
    if c not in index:
      shown = ', '.join(classes[:10]) + (', ...' if len(classes) > 10 else '')
      raise ValueError(
          f'split {split!r}: class folder {os.path.join(d, c)} is not a class '
          f'of the training split {train_split!r} ({len(classes)} classes: '
          f'{shown}); labels come from the training split, so rename or '
          'remove the folder')
    names, other = _image_files(os.path.join(d, c))
    files += [os.path.join(d, c, f) for f in names]
    labels += [index[c]] * len(names)
    skipped += [os.path.join(d, c, f) for f in other]
  if skipped:
    n = len(skipped)
    print(f'note: {d}: skipped {n} file{"s" * (n > 1)} without an image '
          f'extension, e.g. {skipped[0]}', file=sys.stderr, flush=True)
  return Split(tuple(files), np.asarray(labels, np.int32))
