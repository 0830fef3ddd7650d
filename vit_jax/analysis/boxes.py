"""Object bounding boxes of images: PASCAL-VOC / ILSVRC XML, JSON, CSV.

Coordinates, in every format: integer pixels of the ORIGINAL image file
(before any resize or crop), 1-based and inclusive as in PASCAL VOC and the
ILSVRC annotations: the box `xmin ymin xmax ymax` covers columns xmin..xmax
and rows ymin..ymax, counting the top-left pixel as (1, 1); a box of the
whole W x H image is `1 1 W H`. In a 0-based array that is
`image[ymin - 1:ymax, xmin - 1:xmax]` (`Box.slices`).

Formats (`read` picks one by the path):
  DIR       every `*.xml` below it (recursively, as ILSVRC's
            `Annotation/<wnid>/<image>.xml`), one image per file.
  FILE.xml  one PASCAL-VOC / ILSVRC annotation:
              <annotation><filename>n01440764_tench.JPEG</filename>
                <size><width>500</width><height>375</height></size>
                <object><name>n01440764</name>
                  <bndbox><xmin>35</xmin><ymin>127</ymin>
                          <xmax>428</xmax><ymax>300</ymax></bndbox>
                </object> ...
              </annotation>
            `<filename>` (ILSVRC writes it without extension) names the
            image; without it, the XML file's own name does.
  FILE.json a list of boxes, one object each:
              [{"image": "n01440764_tench.JPEG", "label": "n01440764",
                "xmin": 35, "ymin": 127, "xmax": 428, "ymax": 300}, ...]
  FILE.csv  the same fields as columns, header first:
              image,label,xmin,ymin,xmax,ymax
              n01440764_tench.JPEG,n01440764,35,127,428,300

Images and annotations are matched by file name without extension and
folder (`n01440764_96` matches `.../n01440764_96.JPEG`). The class of an
image is the wnid its file name starts with (`n01440764_...`: ILSVRC's
train images and the shared sample photos are named so); only the boxes
whose label is that wnid are its own-class boxes (`own_class_boxes`).
"""

import csv
import dataclasses
import json
import os
import re
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

from vit_jax.data import images
from vit_jax.analysis import validate

FIELDS = ('image', 'label', 'xmin', 'ymin', 'xmax', 'ymax')
WNID = re.compile(r'^(n\d{8})(?:_|$)')


@dataclasses.dataclass(frozen=True)
class Box:
  """One box: label (wnid) and 1-based inclusive pixel corners (module doc).

  `source` names the file (and record) it came from, for error messages.
  """
  label: str
  xmin: int
  ymin: int
  xmax: int
  ymax: int
  source: str = ''

  def corners(self) -> tuple[int, int, int, int]:
    return (self.xmin, self.ymin, self.xmax, self.ymax)

  def slices(self) -> tuple[slice, slice]:
    """(rows, columns) of the box in a 0-based [H, W] array."""
    return (slice(self.ymin - 1, self.ymax), slice(self.xmin - 1, self.xmax))


@dataclasses.dataclass
class Annotation:
  """The boxes of one image; `size` (width, height) when the file gives it."""
  image: str
  boxes: list
  size: Optional[tuple[int, int]] = None
  source: str = ''


def image_key(name: str) -> str:
  """File name without folder and image / XML extension: what matches an
  image with its boxes."""
  stem, ext = os.path.splitext(os.path.basename(name))
  return stem if ext.lower() in images.IMAGE_EXTENSIONS + ('.xml',) else (
      stem + ext)


def image_class(name: str) -> str:
  """The wnid an image file name starts with (`n01440764_tench.JPEG`)."""
  m = WNID.match(os.path.basename(name))
  if not m:
    raise validate.AnalysisError(
        f'{name}: the image class is the wnid its file name starts with '
        '(e.g. n01440764_tench.JPEG); this name has none')
  return m.group(1)


def own_class_boxes(annotation: Annotation, wnid: str) -> list:
  """The boxes of `annotation` labelled `wnid` (the image's own class)."""
  return [b for b in annotation.boxes if b.label == wnid]


def _int(value, what: str, source: str) -> int:
  try:
    f = float(str(value).strip())
    if f.is_integer():
      return int(f)
  except ValueError:
    pass
  raise validate.AnalysisError(
      f'{source}: {what} {value!r} is not an integer pixel coordinate')


def _box(label, corners: Sequence, source: str) -> Box:
  names = ('xmin', 'ymin', 'xmax', 'ymax')
  label = str(label or '').strip()
  if not label:
    raise validate.AnalysisError(f'{source}: box without a label')
  xmin, ymin, xmax, ymax = (_int(v, n, source) for v, n in zip(corners, names))
  if xmin > xmax or ymin > ymax:
    raise validate.AnalysisError(
        f'{source}: box {label} (xmin, ymin, xmax, ymax) = '
        f'({xmin}, {ymin}, {xmax}, {ymax}) has xmin > xmax or ymin > ymax')
  return Box(label, xmin, ymin, xmax, ymax, source)


def read_voc_xml(path: str) -> Annotation:
  """One PASCAL-VOC / ILSVRC XML file (module doc)."""
  try:
    root = ET.parse(path).getroot()
  except (ET.ParseError, OSError) as e:
    raise validate.AnalysisError(f'cannot read boxes {path}: {e}') from e
  if root.tag != 'annotation':
    raise validate.AnalysisError(
        f'{path}: root element is <{root.tag}>, expected <annotation>')
  image = (root.findtext('filename') or '').strip() or image_key(path)
  size = None
  if root.find('size') is not None:
    size = tuple(_int(root.findtext(f'size/{k}'), f'size/{k}', path)
                 for k in ('width', 'height'))
  out = []
  for i, obj in enumerate(root.findall('object')):
    src = f'{path} object {i}'
    bb = obj.find('bndbox')
    if bb is None:
      raise validate.AnalysisError(f'{src}: no <bndbox>')
    corners = [bb.findtext(k) for k in ('xmin', 'ymin', 'xmax', 'ymax')]
    if None in corners:
      raise validate.AnalysisError(
          f'{src}: <bndbox> needs xmin, ymin, xmax, ymax')
    out.append(_box(obj.findtext('name'), corners, src))
  return Annotation(image, out, size, path)


def _records(rows, path: str) -> list:
  """Box records (dicts with FIELDS) -> Annotations, one per image."""
  by_image: dict = {}
  for i, r in enumerate(rows):
    src = f'{path} record {i}'
    if not isinstance(r, dict):
      raise validate.AnalysisError(f'{src}: expected an object with '
                                   f'{", ".join(FIELDS)}')
    missing = [k for k in FIELDS if r.get(k) in (None, '')]
    if missing:
      raise validate.AnalysisError(f'{src}: missing {", ".join(missing)} '
                                   f'(fields: {", ".join(FIELDS)})')
    image = str(r['image']).strip()
    ann = by_image.setdefault(image, Annotation(image, [], None, path))
    ann.boxes.append(_box(r['label'], [r[k] for k in FIELDS[2:]], src))
  return list(by_image.values())


def read_json(path: str) -> list:
  """A JSON list of box records (module doc) -> Annotations."""
  try:
    with open(path) as f:
      rows = json.load(f)
  except (OSError, ValueError) as e:
    raise validate.AnalysisError(f'cannot read boxes {path}: {e}') from e
  if not isinstance(rows, list):
    raise validate.AnalysisError(f'{path}: expected a JSON list of boxes')
  return _records(rows, path)


def read_csv(path: str) -> list:
  """A CSV of box records with header `image,label,xmin,ymin,xmax,ymax`."""
  try:
    with open(path, newline='') as f:
      reader = csv.DictReader(f)
      missing = [k for k in FIELDS if k not in (reader.fieldnames or [])]
      if missing:
        raise validate.AnalysisError(
            f'{path}: header lacks {", ".join(missing)} (expected '
            f'{",".join(FIELDS)})')
      rows = list(reader)
  except OSError as e:
    raise validate.AnalysisError(f'cannot read boxes {path}: {e}') from e
  return _records(rows, path)


def read(path: str) -> dict:
  """Annotations from a folder of XML or one .xml / .json / .csv file,
  keyed by `image_key` of the image they name."""
  if os.path.isdir(path):
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path)
                   for f in fs if f.lower().endswith('.xml'))
    if not files:
      raise validate.AnalysisError(f'no *.xml box files in folder {path}')
    anns = [read_voc_xml(f) for f in files]
  elif not os.path.isfile(path):
    raise validate.AnalysisError(f'boxes missing: no such file or folder '
                                 f'{path}')
  else:
    ext = os.path.splitext(path)[1].lower()
    readers = {'.xml': lambda p: [read_voc_xml(p)], '.json': read_json,
               '.csv': read_csv}
    if ext not in readers:
      raise validate.AnalysisError(
          f'{path}: box files are .xml, .json or .csv (or a folder of .xml)')
    anns = readers[ext](path)
  out = {}
  for a in anns:
    key = image_key(a.image)
    if key in out:
      raise validate.AnalysisError(
          f'{a.source}: image {a.image} already has boxes in '
          f'{out[key].source}')
    out[key] = a
  return out


def check_in_image(annotation: Annotation, boxes: Sequence[Box],
                   width: int, height: int, image_path: str,
                   clip: bool = False) -> list:
  """`boxes` checked against the image's real size (width, height).

  A box must lie within 1..width, 1..height, and an annotation's `size`
  must equal the image's. `clip=True` clips overhanging boxes to the image
  instead (as slicing in the authors' loader does) and drops boxes that
  then hold no pixel.
  """
  if annotation.size is not None and tuple(annotation.size) != (width,
                                                                height):
    raise validate.AnalysisError(
        f'{annotation.source}: <size> {annotation.size[0]}x'
        f'{annotation.size[1]} differs from the image {image_path} '
        f'{width}x{height}')
  out = []
  for b in boxes:
    inside = (1 <= b.xmin and b.xmax <= width and 1 <= b.ymin and
              b.ymax <= height)
    if inside:
      out.append(b)
    elif clip:
      c = Box(b.label, max(b.xmin, 1), max(b.ymin, 1), min(b.xmax, width),
              min(b.ymax, height), b.source)
      if c.xmin <= c.xmax and c.ymin <= c.ymax:
        out.append(c)
    else:
      raise validate.AnalysisError(
          f'{b.source}: box {b.label} (xmin, ymin, xmax, ymax) = '
          f'{b.corners()} lies outside the image {image_path} ({width}x'
          f'{height}: allowed 1..{width}, 1..{height}, 1-based inclusive)')
  return out


def synset_indices(path: str) -> dict:
  """wnid -> class index: the wnid's line (0-based) in a synsets file."""
  if not os.path.isfile(path):
    raise validate.AnalysisError(f'no synsets file {path} (one wnid a line, '
                                 'in the order of the model\'s classes)')
  with open(path) as f:
    wnids = [w.strip() for w in f if w.strip()]
  return {w: i for i, w in enumerate(wnids)}
