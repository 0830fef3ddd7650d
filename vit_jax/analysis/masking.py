"""Background / foreground inputs from object boxes (Ghiasi et al. 2022).

The authors' protocol (hamidkazemi22/vit-visualization,
`datasets/imagenet_boxes.py` and `experiments/it13/fore_back.py`): for each
image, the foreground is the union of the image's own-class boxes (see
`boxes`), pixel-exact at the image's FULL resolution. Removed pixels are set
to 0 (black; -1 in the models' [-1, 1] range) BEFORE the eval resize and
centre crop, which then run on all three inputs alike:

  original         the image
  background_only  the foreground removed (the boxes black)
  foreground_only  the background removed (all but the boxes black)

Boxes are 1-based inclusive pixels (`boxes` module doc): the box
`xmin ymin xmax ymax` removes exactly columns xmin..xmax, rows ymin..ymax.
(The authors' loader slices `[ymin:ymax, xmin:xmax]` of the 0-based array,
which leaves the box's first row and column; one pixel of the full-size
image per side.)

For images without boxes, `center_box_patches` is an approximation
(patches around a fixed centre box, after the crop; mid-grey).
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

from vit_jax.data import images as image_io
from vit_jax.analysis import boxes as box_io
from vit_jax.analysis import validate

CONDITIONS = ('original', 'background_only', 'foreground_only')
TITLES = {'original': 'original',
          'background_only': 'background only\n(foreground removed)',
          'foreground_only': 'foreground only\n(background removed)'}
FILL = 0  # uint8 black; -1 after scaling to [-1, 1]
PROTOCOLS = ('boxes', 'center_box_patches')


@dataclasses.dataclass
class Sample:
  """An image with its class and own-class boxes (not yet checked against
  the image's size)."""
  path: str
  wnid: str
  label: int
  annotation: box_io.Annotation
  boxes: list


def union_mask(boxes: Sequence, height: int, width: int) -> np.ndarray:
  """Foreground pixels, bool [height, width]: the union of `boxes`
  (`boxes.Box`, 1-based inclusive, within the image)."""
  fg = np.zeros((height, width), bool)
  for b in boxes:
    fg[b.slices()] = True
  return fg


def remove(image: np.ndarray, foreground: np.ndarray,
           condition: str) -> np.ndarray:
  """uint8 image [H, W, 3] with the pixels `condition` removes set to FILL.

  `foreground` is bool [H, W] (`union_mask`); `condition` one of CONDITIONS.
  """
  if condition == 'original':
    return image
  drop = foreground if condition == 'background_only' else ~foreground
  out = image.copy()
  out[drop] = FILL
  return out


def conditions(image: np.ndarray, foreground: np.ndarray,
               resolution: int = 224, crop_pct: float = image_io.CROP_PCT,
               resize: Optional[int] = None) -> np.ndarray:
  """The three inputs of one image -> uint8 [3, resolution, resolution, 3].

  `image` is uint8 [H, W, 3] at full resolution, `foreground` bool [H, W];
  removal happens first, then `vit_jax.data.images.preprocess` (the eval resize
  and centre crop of `images.load_image`) on each, in CONDITIONS order.
  """
  return np.stack([image_io.preprocess(remove(image, foreground, c),
                                       resolution, crop_pct, resize)
                   for c in CONDITIONS])


def topk_correct(logits: np.ndarray, labels: np.ndarray,
                 k: int) -> np.ndarray:
  """bool [B]: the label is among the k largest logits [B, classes]."""
  top = np.argsort(-np.asarray(logits), axis=-1, kind='stable')[:, :k]
  return (top == np.asarray(labels)[:, None]).any(-1)


def match(paths: Sequence[str], annotations: dict,
          synsets: dict) -> tuple[list, dict]:
  """Images that have own-class boxes -> (Samples, counts of the others).

  `annotations` from `boxes.read`, `synsets` wnid -> class index
  (`boxes.synset_indices`). An image without an annotation, or whose
  annotation has no box of its class, is skipped and counted, as the
  authors evaluate only images with boxes.
  """
  samples, skipped = [], {'no_annotation': 0, 'no_own_class_box': 0}
  for p in paths:
    ann = annotations.get(box_io.image_key(p))
    if ann is None:
      skipped['no_annotation'] += 1
      continue
    wnid = box_io.image_class(p)
    own = box_io.own_class_boxes(ann, wnid)
    if not own:
      skipped['no_own_class_box'] += 1
      continue
    if wnid not in synsets:
      raise validate.AnalysisError(
          f'{p}: class {wnid} is not one of the model\'s classes '
          f'({len(synsets)} wnids in the synsets file)')
    samples.append(Sample(p, wnid, synsets[wnid], ann, own))
  return samples, skipped


def load(sample: Sample, resolution: int = 224,
         crop_pct: float = image_io.CROP_PCT, resize: Optional[int] = None,
         clip: bool = False) -> tuple[np.ndarray, dict]:
  """(uint8 [3, resolution, resolution, 3] in CONDITIONS order, info).

  info: `foreground_share`, the share of the full-size image's pixels in
  the foreground, and `boxes_clipped`, own-class boxes that `clip` changed
  or dropped (`boxes.check_in_image`).
  """
  try:
    image = np.asarray(image_io.open_rgb(sample.path), np.uint8)
  except image_io.ImageError as e:
    raise validate.AnalysisError(str(e)) from e
  h, w = image.shape[:2]
  own = box_io.check_in_image(sample.annotation, sample.boxes, w, h,
                              sample.path, clip)
  fg = union_mask(own, h, w)
  info = {'foreground_share': float(fg.mean()),
          'boxes_clipped': len(sample.boxes) - sum(b in sample.boxes
                                                   for b in own)}
  return conditions(image, fg, resolution, crop_pct, resize), info
