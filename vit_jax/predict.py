"""Classify images with a checkpoint: top-5 classes per image.

    python -m vit_jax.predict --model=Ti/16 --checkpoint=ViT-Ti_16.npz \
        [--resolution=224] [--crop_pct=0.9] [--labels=FILE] [--json] \
        IMAGE_OR_DIR...

Eval preprocessing (`vit_jax.data.images`, the same rule as the analyses):
decode to RGB, resize the shorter side to floor(resolution / crop_pct) with
bicubic (antialiased) resampling (248 for 224 at the default 0.9), center
crop resolution x resolution, scale pixels to [-1, 1]. With `--crop_pct=1`
the shorter side is resized straight to the resolution. The number of classes
is read from the checkpoint's head; position embeddings are resampled when
`--resolution` differs from the checkpoint's.

`--labels` is a text file with one class name per line, or a TSV whose last
column is the name (e.g. `index<TAB>wnid<TAB>name`); without it classes are
printed as `class_<index>`. With `--json` each image is one line:
`{"image": PATH, "top5": [[class_index, label, probability], ...]}`.

Errors (missing file, a checkpoint that is truncated, holds NaN/Inf or does
not fit the model, an unknown model name) print one line and exit with
status 1. An unreadable image is named in one line on stderr and the other
images are still classified; the exit status is then 1.
"""

import argparse
import json
import os
import sys
from typing import Iterator, Optional, Sequence

import numpy as np

from vit_jax.data import images


class PredictError(Exception):
  """A user error; printed as one line."""


def read_labels(path: Optional[str], num_classes: int) -> list[str]:
  """Class names from a file (module doc), or `class_<i>`."""
  if path is None:
    return [f'class_{i}' for i in range(num_classes)]
  if not os.path.isfile(path):
    raise PredictError(f'no such labels file: {path}')
  with open(path) as f:
    names = [line.rstrip('\n').split('\t')[-1] for line in f if line.strip()]
  if len(names) != num_classes:
    raise PredictError(f'{path} has {len(names)} labels, the checkpoint has '
                       f'{num_classes} classes')
  return names


def load_classifier(model_name: str, checkpoint_path: str, resolution: int):
  """Builds the model and loads the checkpoint (`vit_jax.checkpoints.pretrained`);
  returns (probs_fn: images [B, R, R, 3] -> [B, classes], classes)."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.checkpoints import pretrained  # pylint: disable=g-import-not-at-top
  from vit_jax.perf import hooks  # pylint: disable=g-import-not-at-top

  try:
    restored = pretrained.read(checkpoint_path)
    if restored.num_classes is None:
      raise PredictError(f'{checkpoint_path} has no classification head')
    print(f'read {restored.describe()}', file=sys.stderr)
    model, params = pretrained.load_model(
        model_name, restored, (resolution, resolution),
        **hooks.model_overrides({}, jax.default_backend(),
                                jax.device_count(), model_name))
  except ValueError as e:
    raise PredictError(str(e)) from e

  @jax.jit
  def probs(images):
    return jax.nn.softmax(model.apply({'params': params}, images), axis=-1)
  return probs, restored.num_classes


def batched(items: Sequence[str], n: int) -> Iterator[Sequence[str]]:
  for i in range(0, len(items), n):
    yield items[i:i + n]


def predict(probs_fn, paths: Sequence[str], resolution: int, crop_pct: float,
            batch_size: int
            ) -> Iterator[tuple[str, Optional[np.ndarray], Optional[str]]]:
  """Yields (path, class probabilities [num_classes] or None, error or None)
  per image, in order: an unreadable image yields its one-line error and the
  rest of its batch is still classified."""
  for chunk in batched(paths, batch_size):
    decoded, errors = [], {}
    for p in chunk:
      try:
        decoded.append(images.load_image(p, resolution, crop_pct))
      except images.ImageError as e:
        errors[p] = str(e)
    ok = [p for p in chunk if p not in errors]
    probs = {}
    if ok:
      x = images.to_model_range(np.stack(decoded))
      if len(ok) < batch_size:  # pad so one compiled shape serves all
        x = np.concatenate([x, np.zeros((batch_size - len(ok), *x.shape[1:]),
                                        x.dtype)])
      probs = dict(zip(ok, np.asarray(probs_fn(x))[:len(ok)]))
    for p in chunk:
      if p in errors:
        yield p, None, errors[p]
      elif not np.all(np.isfinite(probs[p])):
        yield p, None, f'{p}: the model gave non-finite probabilities'
      else:
        yield p, probs[p], None


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m vit_jax.predict',
      description='Top-5 classes per image with a ViT checkpoint. Images are '
      'decoded to RGB, the shorter side resized to floor(resolution / '
      'crop_pct) (bicubic, antialiased), center-cropped to resolution x '
      'resolution and scaled to [-1, 1]; position embeddings are resampled '
      'when the resolution is not the checkpoint\'s.',
      epilog='example: python -m vit_jax.predict --model=Ti/16 '
      '--checkpoint=ViT-Ti_16.npz --labels=imagenet1k_labels.tsv photo.jpg '
      'more_photos/')
  p.add_argument('--model', required=True,
                 help='registry name of the checkpoint\'s architecture, '
                 'e.g. Ti/16, ViT-B_16, R26+S/32, Mixer-B_16')
  p.add_argument('--checkpoint', required=True,
                 help='an official .npz checkpoint file; the number of '
                 'classes is read from its head')
  p.add_argument('--resolution', type=int, default=224,
                 help='side of the square model input in pixels (default '
                 '%(default)s)')
  p.add_argument('--crop_pct', type=float, default=images.CROP_PCT,
                 help='center-crop fraction in (0, 1]: the shorter side is '
                 'first resized to floor(resolution / crop_pct) (default '
                 '%(default)s: 248 for 224; 1: no crop)')
  p.add_argument('--labels', default=None,
                 help='class names: one per line, or a TSV whose last column '
                 'is the name (default: class_<index>)')
  p.add_argument('--batch_size', type=int, default=32,
                 help='images per forward pass (default %(default)s)')
  p.add_argument('--json', action='store_true',
                 help='one JSON object per image: {"image": PATH, "top5": '
                 '[[class_index, label, probability], ...]}')
  p.add_argument('images', nargs='+', metavar='IMAGE_OR_DIR',
                 help='image files, or folders (their images, sorted)')
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parser().parse_args(argv)
  try:
    if not 0 < args.crop_pct <= 1:
      raise PredictError(f'--crop_pct={args.crop_pct} must be in (0, 1]')
    paths = images.list_images(args.images)
    if '://' not in args.checkpoint and not os.path.isfile(args.checkpoint):
      raise PredictError(f'no such checkpoint: {args.checkpoint}')
    probs_fn, num_classes = load_classifier(args.model, args.checkpoint,
                                            args.resolution)
    labels = read_labels(args.labels, num_classes)
    failed = 0
    for path, p, error in predict(probs_fn, paths, args.resolution,
                                  args.crop_pct, args.batch_size):
      if error is not None:
        failed += 1
        print(f'error: {error}', file=sys.stderr)
        continue
      top = np.argsort(-p, kind='stable')[:5]
      if args.json:
        print(json.dumps({'image': path, 'top5': [
            [int(i), labels[i], round(float(p[i]), 6)] for i in top]},
                         allow_nan=False))
      else:
        print(path)
        for rank, i in enumerate(top, 1):
          print(f'  {rank}. {labels[i]} ({i}): {p[i]:.4f}')
      sys.stdout.flush()
  except (PredictError, images.ImageError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if failed:
    print(f'error: {failed} of {len(paths)} images could not be classified '
          '(named above)', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
