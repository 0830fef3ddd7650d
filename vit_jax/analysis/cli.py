"""CLI for the analyses in `vit_jax.analysis`: PNG figures + a JSON of numbers.

    python -m vit_jax.analysis SUBCOMMAND --out DIR [--model NAME]
        [--checkpoint FILE.npz] [--resolution 224] ...

Subcommands (each writes `DIR/<subcommand>.json` and PNGs into DIR):
  attention   CLS attention per block and head, rollout, mean distance
              (--images FILE_OR_DIR...)
  embeddings  position-embedding similarity, patch-embedding PCA
  featvis     activation maximization (--features mlp:1:10,block:6:3 ...)
  spatial     each unit's top image per block and its map there; a
              feature's locality per block (--images ...)
  cls         top-1 vs the block k where the class token joins the
              patch tokens, k = 0..L (--data ..., --mode alone|raw)
  lowpass     top-1 vs Fourier low-pass cut-off (--data ...,
              --window circle|rectangle)
  masking     top-1 on original / background only / foreground only
              (--boxes own-class object boxes; --protocol
              center_box_patches: an approximation without boxes)
  compare     curves of several lowpass / masking JSONs in one figure

`--data` is `imagenet_samples` (the 1,000 real photos of the shared data
folder), `cifar10:test` / `cifar10:train`, or a folder `<dir>/<class>/*.jpg`.
Bad input (unknown layer, feature index out of range, missing image) exits
with status 1 and one line naming the allowed range.
"""

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_jax.analysis import attention
from vit_jax.analysis import boxes
from vit_jax.analysis import center_box_patches
from vit_jax.analysis import cls_insertion
from vit_jax.analysis import data
from vit_jax.analysis import embeddings
from vit_jax.analysis import evaluation
from vit_jax.analysis import feature_vis as fv
from vit_jax.analysis import figures
from vit_jax.analysis import frequency
from vit_jax.analysis import masking
from vit_jax.analysis import modelinfo
from vit_jax.analysis import spatial
from vit_jax.analysis import validate
from vit_jax.data import dataset_info
from vit_jax.models import intermediates


def _write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (tmp + rename), so an interrupted run keeps the last."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, default=_plain)
  os.replace(tmp, path)


def _plain(o):
  """numpy scalars / arrays -> Python numbers / lists (for json)."""
  return o.tolist() if hasattr(o, 'tolist') else str(o)


def _ints(s: str, flag: str) -> list[int]:
  """'0,5,11' -> [0, 5, 11]; anything else is a one-line AnalysisError."""
  try:
    return [int(v) for v in s.split(',') if v.strip()]
  except ValueError:
    raise validate.AnalysisError(
        f'{flag} {s!r}: expected comma-separated integers, e.g. 0,5,11'
    ) from None


def _floats(s: str, flag: str) -> list[float]:
  """'1,0.5' -> [1.0, 0.5]; anything else is a one-line AnalysisError."""
  try:
    return [float(v) for v in s.split(',') if v.strip()]
  except ValueError:
    raise validate.AnalysisError(
        f'{flag} {s!r}: expected comma-separated numbers, e.g. 1,0.3,0.1'
    ) from None


def _default_model(args) -> None:
  if args.model is None and not (args.checkpoint and
                                 os.path.isdir(args.checkpoint)):
    args.model = 'Ti/16'


def _model_only(args):
  """The model without weights, to check a request before the slow part."""
  _default_model(args)
  return modelinfo.build(args.model, args.checkpoint)


def _load_model(args, image_size):
  """(model, params) from --model / --checkpoint (.npz or a workdir)."""
  _default_model(args)
  model, params = modelinfo.load(args.model, args.checkpoint, image_size,
                                 num_classes=args.num_classes)
  if args.model is None:
    args.model = modelinfo.read_workdir_name(args.checkpoint)
  return model, params


def _dataset(args):
  """(uint8 images [B, R, R, 3], labels [B], description)."""
  spec = args.data
  if spec == 'imagenet_samples':
    paths, labels = data.imagenet_samples(limit=args.limit)
  elif spec.startswith('cifar10:'):
    split = spec.split(':', 1)[1]
    paths, labels, _ = data.image_folder(
        str(data.shared_data_dir() / 'cifar10' / split),
        limit_per_class=args.limit and -(-args.limit // 10))
  else:
    paths, labels, _ = data.image_folder(spec)
  if args.limit:
    paths, labels = paths[:args.limit], labels[:args.limit]
  t0 = time.time()
  images = data.load_images(paths, args.resolution, args.resize)
  print(f'loaded {len(paths)} images from {spec} in {time.time() - t0:.0f}s',
        file=sys.stderr)
  return images, labels, f'{spec} ({len(paths)} images)'


def _meta(args) -> dict:
  return {'model': args.model, 'checkpoint': args.checkpoint,
          'resolution': args.resolution, 'command': ' '.join(sys.argv)}


def _title_name(args, model) -> str:
  """The model as figure titles name it: 'ViT-Ti/16' for the registry's
  'Ti/16' (ViTs whose name does not say so), else the name as given."""
  name = str(args.model)
  if modelinfo.kind(model) == 'vit' and 'vit' not in name.lower():
    return f'ViT-{name}'
  return name


IMAGENET_NAMES = 'imagenet_labels/imagenet1k_index_wnid_lemma.tsv'


def _class_names(args, num_classes: int) -> list[str]:
  """Class names for figure titles: a workdir's classes.json, else for a
  1,000-class head the first ImageNet-1k name of each line of the shared
  `IMAGENET_NAMES` (index, wnid, names), else 'class <i>'."""
  path = os.path.join(args.checkpoint or '', dataset_info.CLASSES_FILE)
  if args.checkpoint and os.path.isfile(path):
    names = json.load(open(path))
    if len(names) == num_classes:
      return [str(n) for n in names]
  tsv = data.shared_data_dir() / IMAGENET_NAMES
  if num_classes == 1000 and tsv.is_file():
    names = [line.rstrip('\n').split('\t')[-1].split(',')[0]
             for line in open(tsv) if line.strip()]
    if len(names) == num_classes:
      return names
  return [f'class {i}' for i in range(num_classes)]


def _shown_name(name: str) -> str:
  """An image name as figures show it: ImageNet's '<wnid>_<name>' -> name."""
  return re.sub(r'^n\d{8}_', '', name)


def _predictions(logits) -> tuple[np.ndarray, np.ndarray]:
  """(top-1 class [B], its softmax probability [B]) of logits [B, classes]."""
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  top = p.argmax(-1)
  return top, p[np.arange(len(p)), top]


def _percent(p: float) -> str:
  """A probability as '93 %', or '99.8 %' / '0.4 %' near the ends (never
  a rounded 100 or 0), with no line break before the sign."""
  digits = 0 if 0.01 <= p < 0.995 else 1
  return f'{100 * p:.{digits}f}\u00a0%'


def _images(args):
  """Images from --images (paths / dirs) -> (names, float [-1, 1] batch)."""
  paths = data.list_images(args.images)[:args.limit or None]
  imgs = data.to_model(data.load_images(paths, args.resolution, args.resize,
                                        progress=False))
  names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  return names, imgs


def cmd_attention(args) -> dict:
  r = args.resolution
  model = _model_only(args)
  if modelinfo.kind(model) != 'vit':
    raise validate.AnalysisError('attention needs a ViT; the model is a '
                                 f'{modelinfo.kind(model)}')
  n_layers = modelinfo.num_layers(model)
  layers = [modelinfo.check_layer(model, k) for k in
            (_ints(args.layers, '--layers') if args.layers
             else range(n_layers))]
  heads = validate.indices('head', _ints(args.heads, '--heads'),
                           model.num_heads,
                           f'{model.num_heads} heads') if args.heads else list(
                               range(model.num_heads))
  names, imgs = _images(args)
  model, params = _load_model(args, (r, r))
  grid = model.patch_grid((r, r))
  prefix = modelinfo.num_prefix(model)
  logits, inter = intermediates.apply(model, params, jnp.asarray(imgs))
  att = inter['attention']
  cls = np.asarray(attention.cls_maps(att, grid, prefix))  # [L,B,H,h,w]
  roll = np.asarray(attention.rollout_map(att, grid, prefix))
  dist = attention.mean_distance(att, grid, modelinfo.patch_size(model),
                                 prefix)
  top, prob = _predictions(logits)
  classes = _class_names(args, np.asarray(logits).shape[-1])
  shown = [_shown_name(nm) for nm in names]
  predicted = [f'{classes[t]} ({_percent(q)})' for t, q in zip(top, prob)]
  who = _title_name(args, model)
  h, w = grid
  files = []
  for i, name in enumerate(names):
    files.append(figures.save(figures.attention_grid(
        imgs[i], cls[layers][:, i][:, heads],
        f'{who} on {shown[i]}, predicted: {predicted[i]}. '
        + ('Class-token attention' if prefix else 'Attention received, mean '
           'over the patch queries,') +
        f' over the {h}x{w} patches, per block (rows) and head (columns)',
        [f'block {k}' for k in layers],
        [f'head {k}' for k in heads]),
        os.path.join(args.out, f'attention_{name}.png')))
  files.append(figures.save(figures.overlays(
      imgs, roll, [f'{figures.short(nm, 26)}\npredicted ({_percent(q)}):'
                   f'\n{figures.short(classes[t], 26)}'
                   for nm, t, q in zip(shown, top, prob)],
      f'{who}: attention rollout (Abnar & Zuidema 2020), '
      + ("the class token's row" if prefix else 'the mean row') +
      f" over the {h}x{w} patches (every block's head-averaged "
      'attention with the identity, 0.5 A + 0.5 I, multiplied through the '
      'blocks)', 'rollout weight / its maximum in the map', 'rollout'),
      os.path.join(args.out, 'rollout.png')))
  files.append(figures.save(figures.mean_distance(
      dist, f'{who}: mean attention distance per head (attention-weighted '
      f'pixel distance between patches), mean over {len(names)} images'),
      os.path.join(args.out, 'mean_distance.png')))
  return {'images': names, 'predicted_class': top.tolist(),
          'predicted_name': [classes[t] for t in top],
          'predicted_probability': prob.round(4).tolist(),
          'mean_distance_px': dist.round(2).tolist(),
          'rollout_peak_patch': [
              [int(v) for v in np.unravel_index(m.argmax(), m.shape)]
              for m in roll],
          'figures': files}


def cmd_embeddings(args) -> dict:
  r = args.resolution
  model, params = _load_model(args, (r, r))
  if modelinfo.kind(model) != 'vit':
    raise validate.AnalysisError('embeddings needs a ViT; the model is a '
                                 f'{modelinfo.kind(model)}')
  grid = model.patch_grid((r, r))
  pe = params['Transformer']['posembed_input']['pos_embedding']
  sim = embeddings.posemb_similarity(pe, grid, modelinfo.num_prefix(model))
  out = {'grid': list(grid), 'figures': []}
  who = _title_name(args, model)
  out['figures'].append(figures.save(figures.posemb_similarity(
      sim, f'{who}: cosine similarity between position embeddings; the '
      f'tile at row i, column j compares position (i, j) with all '
      f'{grid[0]}x{grid[1]} positions'),
      os.path.join(args.out, 'posemb_similarity.png')))
  # Mean similarity by grid distance (1 = neighbours): shows 2-D structure.
  h, w = grid
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  d = np.sqrt((yy.ravel()[:, None] - yy.ravel()) ** 2 +
              (xx.ravel()[:, None] - xx.ravel()) ** 2)
  flat = sim.reshape(h * w, h * w)
  out['similarity_by_distance'] = {
      str(k): float(flat[np.isclose(d, k)].mean()) for k in (1, 2, 4, 8)
      if np.isclose(d, k).any()}
  kernel = params['embedding']['kernel']
  if model.resnet_layers is None and model.conv_stem is None:
    n = min(args.components, kernel.shape[-1], int(np.prod(kernel.shape[:3])))
    comp, var = embeddings.patch_pca(kernel, n)
    out['explained_variance'] = var.round(4).tolist()
    ph, pw, c, dim = kernel.shape
    out['figures'].append(figures.save(figures.filters(
        comp, f'{who}: first {len(comp)} principal components of the {dim} '
        f'patch-embedding filters ({ph}x{pw}x{c}), each min-max scaled to '
        'RGB [0, 1]; above each: its share of the variance',
        [f'PC {k + 1}: {100 * v:.1f} %' for k, v in enumerate(var)]),
        os.path.join(args.out, 'patch_pca.png')))
  else:
    out['patch_pca'] = 'skipped: hybrid / conv-stem embedding is not on pixels'
  return out


def _parse_features(spec: str):
  out = []
  for item in spec.split(','):
    parts = item.strip().split(':')
    if len(parts) != 3:
      raise validate.AnalysisError(
          f'feature {item!r}: expected KIND:LAYER:INDEX, e.g. mlp:3:10 '
          f'(kinds: {", ".join(fv.KINDS)})')
    try:
      out.append(fv.Feature(parts[0], int(parts[1]), int(parts[2])))
    except ValueError as e:
      raise validate.AnalysisError(f'feature {item!r}: layer and index must '
                                   'be integers') from e
  return out


def cmd_featvis(args) -> dict:
  r = args.resolution
  feats = [fv.check(_model_only(args), f)
           for f in _parse_features(args.features)]
  model, params = _load_model(args, (r, r))
  recipe = fv.Recipe(steps=args.steps, lr=args.lr, copies=args.copies,
                     jitter=args.jitter, flip=args.flip,
                     tv_weight=args.tv_weight, noise=args.noise,
                     seed=args.seed)
  groups: dict = {}
  for f in feats:
    groups.setdefault((f.kind, f.layer), []).append(f)
  json_path = os.path.join(args.out, 'featvis.json')
  out = {'recipe': dataclasses.asdict(recipe), 'features': {},
         'figures': [], **_meta(args)}
  images, titles = {}, {}
  for (kind, layer), fs in sorted(groups.items(), key=lambda kv: kv[0][1]):
    res = fv.visualize(model, params, fs, (r, r), recipe)
    for f, img, s, e in zip(fs, res['images'], res['start'], res['end']):
      images[f] = img
      titles[f] = (f'{f.kind} block {f.layer} unit {f.index}\n'
                   f'{float(s):.2f} \u2192 {float(e):.2f}')
      ratio = float(e / abs(s)) if s else float('inf')
      out['features'][f.name()] = {
          'start': float(s), 'end': float(e), 'ratio_end_over_abs_start':
              round(ratio, 2)}
      path = os.path.join(args.out, f'featvis_{f.name()}.png')
      Image.fromarray((img * 255).round().astype(np.uint8)).save(path)
    out.setdefault('seconds', {})[f'{kind}_L{layer}'] = round(
        res['seconds'], 1)
    _write_json(json_path, out)  # progress survives an interruption
  order = [f for f in feats if f in images]
  out['figures'].append(figures.save(figures.image_grid(
      [images[f] for f in order], [titles[f] for f in order],
      f'{_title_name(args, model)}: feature visualization (activation '
      f'maximization, {recipe.steps} steps, {recipe.copies} augmented '
      "copies). Under each name: the feature's mean over the patch tokens, "
      'on the start noise \u2192 on the image shown', ncols=args.ncols),
      os.path.join(args.out, 'featvis.png')))
  return out


def cmd_spatial(args) -> dict:
  r = args.resolution
  model = _model_only(args)
  n = modelinfo.num_layers(model)
  layers = [modelinfo.check_layer(model, k) for k in
            (_ints(args.layers, '--layers') if args.layers else range(n))]
  units = _ints(args.units, '--units') if args.units else list(
      range(args.units_per_block))
  if not units:
    raise validate.AnalysisError(
        f'--units_per_block {args.units_per_block}: need at least 1 unit')
  for k in layers:
    for u in [args.index] + units:
      fv.check(model, fv.Feature(args.kind, k, u))
  names, imgs = _images(args)
  model, params = _load_model(args, (r, r))
  out = {'layers': layers, 'kind': args.kind, 'index': args.index,
         'figures': [], **_meta(args)}
  if args.kind in spatial.TOP_KINDS:
    out['top_images'] = _top_images(args, model, params, names, imgs, layers,
                                    units, out['figures'])
    _write_json(os.path.join(args.out, 'spatial.json'), out)
  else:
    out['top_images'] = (f'skipped: kind {args.kind!r} is not recorded per '
                         f'block; use {" or ".join(spatial.TOP_KINDS)}')
  m = min(args.locality_images, len(names))
  if m:
    _locality(args, model, params, names[:m], imgs[:m], layers, out)
  return out


def _top_images(args, model, params, names, imgs, layers, units,
                files) -> dict:
  """`spatial.top_images` over all images: figure + the JSON entry."""
  t0 = time.time()
  res = spatial.top_images(model, params, imgs, units, args.kind, layers,
                           args.batch_size)
  units = res['units']  # negative indices resolved
  print(f'top images of {len(units)} units x {len(layers)} blocks among '
        f'{len(names)} images in {time.time() - t0:.0f}s', file=sys.stderr)
  shown = [_shown_name(nm) for nm in names]
  what = _spatial_colour(args.kind)
  files.append(figures.save(figures.top_images(
      imgs, res['maps'], res['image'], res['mean'], layers, units, shown,
      f'{_title_name(args, model)}: for each {args.kind} unit of each block '
      f'(rows), the image (of {len(names)}) with the highest mean over the '
      "patch tokens, and the unit's map on it (colour: its "
      f'{what} at each patch, one scale per map)',
      f"colour: the unit's {what} at each patch"),
      os.path.join(args.out, 'top_images.png')))
  per_block = []
  for l, layer in enumerate(layers):
    per_block.append({
        'block': layer,
        'distinct_images': len(set(res['image'][l].tolist())),
        'units': [{'unit': u, 'image': names[res['image'][l, k]],
                   'mean': round(float(res['mean'][l, k]), 4),
                   'mean_over_images': round(float(
                       res['means'][l, :, k].mean()), 4)}
                  for k, u in enumerate(units)]})
  return {'units': units, 'images_searched': len(names),
          'per_block': per_block}


def _spatial_colour(kind: str) -> str:
  """What a `spatial` map's colour is, for a feature kind."""
  return {'mlp': 'activation (GELU output)',
          'block': 'output-token value'}.get(kind, f'{kind} value')


def _locality(args, model, params, names, imgs, layers, out) -> None:
  """Feature `--index` per block on each image, and the locality measure."""
  maps = spatial.maps(model, params, imgs, args.kind, args.index, layers)
  loc = spatial.locality(model, params, imgs, args.kind, args.index, layers,
                         per_side=args.per_side)
  who = _title_name(args, model)
  what = _spatial_colour(args.kind)
  for i, name in enumerate(names):
    shown = _shown_name(name)
    out['figures'].append(figures.save(figures.spatial(
        imgs[i], maps[:, i], loc['own'],
        f'{who}, {args.kind} feature {args.index} on {shown}: its {what} at '
        'each patch after each block (own colour scale per block); loc: '
        "the share of the patch token's input gradient on its own patch",
        f"colour: the feature's {what} at each patch", layers),
        os.path.join(args.out, f'spatial_{name}.png')))
  out['figures'].append(figures.save(figures.curves(
      layers, {'own patch': loc['own'] * 100,
               '3x3 neighbourhood': loc['neighbourhood'] * 100,
               'own patch, chance': [loc['chance_own'] * 100] * len(layers)},
      'block', "share of the patch token's input-gradient mass (%)",
      f'{who}: locality of the patch tokens, {args.kind} feature '
      f'{args.index}, mean over {len(names)} images and '
      f'{args.per_side ** 2} probed patches', logx=False),
      os.path.join(args.out, 'locality.png')))
  out.update({
      'images': names,
      'locality_own': loc['own'].round(4).tolist(),
      'locality_neighbourhood': loc['neighbourhood'].round(4).tolist(),
      'chance_own': loc['chance_own'],
      'chance_neighbourhood': loc['chance_neighbourhood']})


def cmd_cls(args) -> dict:
  r = args.resolution
  model = _model_only(args)
  n = modelinfo.num_layers(model)
  layers = cls_insertion.check(
      model,
      _ints(args.layers, '--layers') if args.layers else list(range(n + 1)),
      args.mode)
  images, labels, desc = _dataset(args)
  model, params = _load_model(args, (r, r))
  out = {'data': desc, 'mode': args.mode,
         'protocol': cls_insertion.PROTOCOLS[args.mode],
         'num_layers': n, 'top1_by_insert_layer': {},
         'note': f'insert layer 0 = the normal model; {n} = the class token '
                 'never meets the patch tokens', **_meta(args)}
  json_path = os.path.join(args.out, 'cls.json')
  for k in layers:
    acc = cls_insertion.top1(model, params, images, labels, k, args.mode,
                             args.batch_size)
    out['top1_by_insert_layer'][str(k)] = round(100 * acc, 2)
    print(f'cls ({args.mode}) k={k}: top-1 {100 * acc:.2f}%',
          file=sys.stderr, flush=True)
    _write_json(json_path, out)  # progress survives an interruption
  top1 = out['top1_by_insert_layer']
  out['figures'] = [figures.save(figures.cls_insertion(
      layers, [top1[str(k)] for k in layers],
      f'CLS late insertion: {_title_name(args, model)} on {desc}\n'
      f'({args.mode}: {cls_insertion.PROTOCOLS[args.mode]})', n),
      os.path.join(args.out, f'cls_{args.mode}.png'))]
  return out


def _curve(args, name: str, xs: Sequence[float], transform_for,
           xlabel: str, what: str, extra: Optional[dict] = None) -> dict:
  """Top-1 for each x of a transform family; JSON rewritten after each x.

  `what` ends the figure title ('<model> on <data>: top-1 <what>');
  `extra` entries go into the JSON from the first write on."""
  r = args.resolution
  model, params = _load_model(args, (r, r))
  images, labels, desc = _dataset(args)
  ev = evaluation.Evaluator(model, params, args.batch_size)
  out = {'data': desc, 'label': args.label or args.model, 'x': [],
         'top1': [], 'xlabel': xlabel, **(extra or {}), **_meta(args)}
  json_path = os.path.join(args.out, f'{name}.json')
  for x in xs:
    acc = ev.top1(images, labels, transform_for(x, model),
                  desc=f'{name} {x}')
    out['x'].append(x)
    out['top1'].append(round(100 * acc, 2))
    print(f'{name} {x}: top-1 {100 * acc:.2f}%', file=sys.stderr, flush=True)
    _write_json(json_path, out)
  out['figures'] = [figures.save(figures.curves(
      out['x'], {out['label']: out['top1']}, xlabel,
      title=f'{_title_name(args, model)} on {desc}: top-1 {what}'),
      os.path.join(args.out, f'{name}.png'))]
  return out


LOWPASS_XLABEL = {
    'circle': 'low-pass cut-off (fraction of the corner radius)',
    'rectangle': 'low-pass cut-off (fraction of Nyquist, per axis)'}


def cmd_lowpass(args) -> dict:
  window = validate.choice('window', args.window, frequency.WINDOWS)
  fr = [validate.fraction('cut-off', f)
        for f in _floats(args.fractions, '--fractions')]
  return _curve(args, 'lowpass', fr,
                lambda f, _: (lambda x: frequency.low_pass(x, f,
                                                           window=window)),
                LOWPASS_XLABEL[window],
                f'after an ideal Fourier low-pass filter ({window} window)',
                extra={'window': window})


def cmd_masking(args) -> dict:
  validate.choice('protocol', args.protocol, masking.PROTOCOLS)
  if args.protocol == 'center_box_patches':
    return _masking_center_box_patches(args)
  for flag in ('fractions', 'remove', 'patch_px'):
    if getattr(args, flag) is not None:
      raise _error(f'--{flag} belongs to --protocol center_box_patches, not '
                   '--protocol boxes')
  if not args.boxes:
    raise _error('--protocol boxes needs --boxes (a folder of PASCAL-VOC / '
                 'ILSVRC .xml, or one .xml, .json or .csv)')
  annotations = boxes.read(args.boxes)
  shared = data.shared_data_dir()
  paths = data.list_images(args.images or [str(shared / 'imagenet_samples')])
  synsets = boxes.synset_indices(
      args.synsets or str(shared / 'imagenet_labels' / 'imagenet_synsets.txt'))
  samples, skipped = masking.match(paths, annotations, synsets)
  samples = samples[:args.limit or None]
  if not samples:
    raise _error(f'no image of --images has own-class boxes in {args.boxes} '
                 f'({len(paths)} images, {skipped["no_annotation"]} without '
                 'an annotation; matched by file name without extension)')
  r = args.resolution
  model, params = _load_model(args, (r, r))
  ev = evaluation.Evaluator(model, params, args.batch_size)
  correct, per_image, examples, num_classes = _masking_evaluate(ev, samples,
                                                                args)
  top1 = {c: round(100 * float(np.mean(v)), 2) for c, v in correct[1].items()}
  top5 = {c: round(100 * float(np.mean(v)), 2) for c, v in correct[5].items()}
  desc = f'{len(samples)} images with own-class boxes'
  who = _title_name(args, model)
  classes = _class_names(args, num_classes)
  files = [_masking_examples(
      examples, classes, os.path.join(args.out, 'masking_examples.png'),
      f'{who}: the three inputs (own-class boxes; removed pixels black, '
      'before resize and crop). Under each: the true class, whether top-1 '
      'is right, the prediction (probability)'),
           figures.save(figures.bars(
               [masking.TITLES[c] for c in masking.CONDITIONS],
               {'top-1': list(top1.values()), 'top-5': list(top5.values())},
               title=f'{who} on {desc}: top-1 and top-5 per input'),
               os.path.join(args.out, 'masking_top1.png'))]
  return {'protocol': 'boxes', 'boxes': args.boxes, 'images': len(samples),
          'skipped': skipped, 'fill': '0 (black; -1 in [-1, 1])',
          'top1': top1, 'top5': top5, 'boxes_clipped': sum(
              p['boxes_clipped'] for p in per_image),
          'conditions': {c: masking.TITLES[c].replace('\n', ' ')
                         for c in masking.CONDITIONS},
          'per_image': per_image, 'figures': files}


def _masking_evaluate(ev, samples, args):
  """Top-1 / top-5 hits per condition, per-image records, examples, and
  the number of classes of the model's logits."""
  labels = np.asarray([s.label for s in samples])
  correct = {k: {c: [] for c in masking.CONDITIONS} for k in (1, 5)}
  per_image, examples = [], []
  for i in range(0, len(samples), args.batch_size):
    chunk = samples[i:i + args.batch_size]
    loaded = [masking.load(s, args.resolution, resize=args.resize,
                           clip=args.clip_boxes) for s in chunk]
    inputs = np.stack([x for x, _ in loaded])  # [n, 3, R, R, 3]
    preds, probs = [], []
    for j, c in enumerate(masking.CONDITIONS):
      logits = ev.logits(inputs[:, j])
      for k in (1, 5):
        correct[k][c] += masking.topk_correct(
            logits, labels[i:i + len(chunk)], k).tolist()
      top, prob = _predictions(logits)
      preds.append(top)
      probs.append(prob)
    for s, (x, info), p, q in zip(chunk, loaded, np.stack(preds, 1),
                                  np.stack(probs, 1)):
      per_image.append({
          'image': os.path.basename(s.path), 'wnid': s.wnid,
          'label': s.label, 'own_class_boxes': len(s.boxes),
          'foreground_share': round(info['foreground_share'], 4),
          'boxes_clipped': info['boxes_clipped'],
          'predicted': dict(zip(masking.CONDITIONS, p.tolist()))})
      if len(examples) < args.examples:
        examples.append((s, x, p, q))
    print(f'  masking: {len(per_image)}/{len(samples)} images',
          file=sys.stderr, flush=True)
  return correct, per_image, examples, logits.shape[-1]


def _masking_examples(examples, classes: Sequence[str], path: str,
                      title: str) -> str:
  """Rows of (original, background only, foreground only); under each
  input the prediction, its probability and whether it is right."""
  imgs, cells = [], []
  for s, x, pred, prob in examples:
    name = _shown_name(os.path.splitext(os.path.basename(s.path))[0])
    imgs.append(x.astype(np.float32) / 255)
    cells.append([f'{figures.short(name, 24)}: '
                  f'{"right" if p == s.label else "wrong"}\n'
                  f'{figures.short(classes[p], 22)} ({_percent(q)})'
                  for p, q in zip(pred, prob)])
  return figures.save(figures.image_table(
      imgs, [masking.TITLES[c] for c in masking.CONDITIONS], cells,
      title=title), path)


def _masking_center_box_patches(args) -> dict:
  if args.boxes:
    raise _error('--boxes belongs to --protocol boxes; center_box_patches '
                 'uses a fixed centre box')
  remove = validate.choice('removed region', args.remove or 'background',
                           center_box_patches.REMOVABLE)
  fr = [validate.fraction('removed fraction', f)
        for f in _floats(args.fractions or '0,0.25,0.5,0.75,1',
                         '--fractions')]

  def transform_for(f, model):
    px = args.patch_px or modelinfo.patch_size(model)[0]
    return lambda x: center_box_patches.remove_patches(x, f, px, remove,
                                                       seed=args.seed)
  out = _curve(args, _json_name(args), fr, transform_for,
               f'fraction of the {remove} patches removed',
               f'with a share of the {remove} patches (around a centre box '
               'of half the side) set to 0, mid-grey')
  out.update({'protocol': 'center_box_patches', 'removed': remove,
              'left_at_fraction_1':
                  center_box_patches.LEFT_AT_FRACTION_1[remove],
              'center_box_side': 0.5, 'fill': '0 (mid-grey in [-1, 1])'})
  return out


def _json_name(args) -> str:
  """`DIR/<name>.json` of a subcommand's result."""
  if args.cmd == 'compare':
    return args.name
  if args.cmd == 'masking' and args.protocol == 'center_box_patches':
    return f'masking_center_box_patches_{args.remove or "background"}_removed'
  return args.cmd


COMPARE_WHAT = {'window': 'after an ideal Fourier low-pass filter',
                'removed': 'with centre-box patches set to mid-grey'}


def _compare_xlabel(results: Sequence[dict]) -> str:
  """One x label for several results: 'cut-off (circle: fraction of the
  corner radius; rectangle: ...)' when they differ only in the brackets."""
  tagged = []
  for r in results:
    tag = r.get('window') or r.get('removed') or ''
    if r.get('xlabel') and (tag, r['xlabel']) not in tagged:
      tagged.append((tag, r['xlabel']))
  labels = [x for _, x in tagged]
  if len(set(labels)) <= 1:
    return labels[0] if labels else ''
  head = labels[0].split(' (')[0]
  if all(x.startswith(head + ' (') and x.endswith(')') for x in labels):
    return head + ' (' + '; '.join(
        f'{t}: {x[len(head) + 2:-1]}' if t else x[len(head) + 2:-1]
        for t, x in tagged) + ')'
  return ' / '.join(labels)


def cmd_compare(args) -> dict:
  ys, xs, datasets, results = {}, None, [], []
  for p in args.results:
    if not os.path.isfile(p):
      raise _error(f'no such result file: {p}')
    r = json.load(open(p))
    if 'x' not in r or 'top1' not in r:
      raise _error(f'{p} is not a lowpass / center_box_patches masking '
                   'result (no "x" and "top1" curve)')
    if xs is not None and r['x'] != xs:
      raise _error(f'{p}: x values {r["x"]} differ from {xs}')
    xs = r['x']
    label = r.get('label') or r['model']
    if 'removed' in r:
      label += f', {r["removed"]} patches removed'
    if 'window' in r:
      label += f', {r["window"]} window'
    ys[label] = r['top1']
    results.append(r)
    if r.get('data') and r['data'] not in datasets:
      datasets.append(r['data'])
  out = {'x': xs, 'top1': ys}
  ylabel = 'top-1 (%)'
  if args.relative:  # share of each model's accuracy at the first x
    if any(y[0] == 0 for y in ys.values()):
      raise _error('--relative: a curve has top-1 0 at the first x')
    ys = {k: [100 * v / y[0] for v in y] for k, y in ys.items()}
    out['relative_top1'] = {k: [round(v, 1) for v in y]
                            for k, y in ys.items()}
    ylabel = f'top-1 relative to x = {xs[0]} (%)'
  # Default title and x label from the results: data, transform, x labels.
  title = args.title
  if not title and datasets:
    title = f'{ylabel[:-4]} on {" / ".join(datasets)}'
    for key, what in COMPARE_WHAT.items():
      if all(key in r for r in results):
        title += f', {what}'
  path = figures.save(figures.curves(
      xs, ys, args.xlabel or _compare_xlabel(results), ylabel=ylabel,
      title=title), os.path.join(args.out, args.name + '.png'))
  out['figures'] = [path]
  return out


def _error(msg: str):
  return validate.AnalysisError(msg)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m vit_jax.analysis',
      description=__doc__.split('\n\n')[0])
  sub = p.add_subparsers(dest='cmd', required=True)

  def common(name, help_, data=False, images=False):
    s = sub.add_parser(name, help=help_, description=help_)
    s.add_argument('--out', required=True, help='output folder')
    s.add_argument('--model', default=None,
                   help='registry name (default Ti/16, or the workdir\'s)')
    s.add_argument('--checkpoint', default=None,
                   help='official .npz, or a vit_jax.main workdir')
    s.add_argument('--num_classes', type=int, default=None,
                   help='head width (default: the checkpoint\'s)')
    s.add_argument('--resolution', type=int, default=224,
                   help='model input side in pixels (default %(default)s)')
    s.add_argument('--resize', type=int, default=None,
                   help='shorter side before the center crop '
                   '(default resolution / 0.9)')
    s.add_argument('--seed', type=int, default=0,
                   help='random seed (default %(default)s)')
    s.add_argument('--limit', type=int, default=None,
                   help='use only the first N images')
    if data:
      s.add_argument('--data', default='imagenet_samples',
                     help='imagenet_samples | cifar10:test | FOLDER')
      s.add_argument('--batch_size', type=int, default=50,
                     help='images per forward pass (default %(default)s)')
      s.add_argument('--label', default=None,
                     help='curve label for compare (default: --model)')
    if images:
      s.add_argument('--images', nargs='+', required=True,
                     help='image files or folders')
    return s

  s = common('attention', 'attention maps, rollout, distance', images=True)
  s.add_argument('--layers', default='', help='blocks to draw, e.g. 0,5,11')
  s.add_argument('--heads', default='', help='heads to draw, e.g. 0,2')
  s = common('embeddings', 'position embeddings, patch-embedding PCA')
  s.add_argument('--components', type=int, default=28,
                 help='principal components of the patch embedding drawn '
                 '(default %(default)s)')
  s = common('featvis', 'feature visualization')
  s.add_argument('--features', required=True,
                 help='KIND:LAYER:INDEX,... kinds mlp|block|query|key|value')
  s.add_argument('--steps', type=int, default=400,
                 help='optimization steps per feature (default %(default)s)')
  s.add_argument('--lr', type=float, default=0.1,
                 help='learning rate of the image (default %(default)s)')
  s.add_argument('--copies', type=int, default=8,
                 help='augmented copies per step (default %(default)s)')
  s.add_argument('--jitter', type=int, default=32,
                 help='largest random shift in pixels (default %(default)s)')
  s.add_argument('--flip', type=float, default=0.0,
                 help='probability of a horizontal flip per copy (default '
                 '%(default)s)')
  s.add_argument('--noise', type=float, default=0.5,
                 help='std of the Gaussian noise added per copy, in [-1, 1] '
                 'pixel units (default %(default)s)')
  s.add_argument('--tv_weight', type=float, default=4e-4,
                 help='weight of the total-variation penalty (default '
                 '%(default)s)')
  s.add_argument('--ncols', type=int, default=4,
                 help='columns of featvis.png (default %(default)s)')
  s = common('spatial', "each unit's top-activating image per block and its "
             'map there; locality of the patch tokens', images=True)
  s.add_argument('--kind', default='mlp',
                 help='mlp (MLP hidden unit after the GELU) | block (output '
                 'token channel); query | key | value for locality only')
  s.add_argument('--layers', default='', help='blocks (default all)')
  s.add_argument('--units_per_block', type=int, default=4,
                 help='top images of units 0..N-1 of every block')
  s.add_argument('--units', default='',
                 help='explicit units instead, e.g. 3,17,42 (every block)')
  s.add_argument('--batch_size', type=int, default=32,
                 help='images per forward pass of the top-image search')
  s.add_argument('--locality_images', type=int, default=2,
                 help='the locality measure and feature --index maps on the '
                 'first N images (input gradients: slow); 0 skips them')
  s.add_argument('--index', type=int, default=0,
                 help='feature of the locality measure and per-image maps')
  s.add_argument('--per_side', type=int, default=3,
                 help='locality: per_side^2 probed patch positions per image')
  s = common('cls', 'CLS late insertion: top-1 vs the block k where the '
             'class token joins the patch tokens', data=True)
  s.description = (
      'CLS late insertion (Ghiasi et al. 2022). The class token joins the '
      'patch tokens only before block k (k = 0: the normal model; k = L: '
      'never). --mode alone (default, the authors\' experiments/it17/cls.py): '
      'before block k the class token (learned token + position row 0) runs '
      'through blocks 0..k-1 alone, a one-token sequence attending only to '
      'itself, while the patch tokens run through them without it; then '
      'blocks k..L-1, final norm, token 0, head. --mode raw: the untouched '
      'class token is prepended before block k. Writes cls.json and '
      'cls_MODE.png (top-1 vs k).')
  s.add_argument('--layers', default='',
                 help='insertion blocks k, each in 0..L (default: all, '
                 '0,1,...,L)')
  s.add_argument('--mode', default='alone',
                 help='what the class token does before block k: alone '
                 '(through the blocks by itself; the authors\' protocol) or '
                 'raw (skips them)')
  s = common('lowpass', 'top-1 vs Fourier low-pass cut-off (ideal window; '
             'the DC term always kept; real part; clipped to [-1, 1])',
             data=True)
  s.add_argument('--fractions', default='1,0.5,0.3,0.2,0.1,0.05,0.02',
                 help='cut-offs in [0, 1]: 1 keeps every frequency, 0 only '
                 'the mean colour')
  s.add_argument('--window', default='circle',
                 help='circle: keep radius sqrt(ky^2 + kx^2) <= fraction x '
                 'the corner radius sqrt((H/2)^2 + (W/2)^2); rectangle: '
                 'keep |ky| <= fraction x H/2 and |kx| <= fraction x W/2 '
                 '(fraction of Nyquist per axis); ky, kx in cycles per '
                 'image')
  s = common('masking', 'original / background only / foreground only',
             data=True)
  s.add_argument('--protocol', default='boxes',
                 help='boxes (own-class boxes, pixel-exact, black) | '
                 'center_box_patches (approximation without boxes)')
  s.add_argument('--boxes', default=None,
                 help='boxes: folder of .xml, or one .xml / .json / .csv')
  s.add_argument('--images', nargs='+', default=None,
                 help='boxes: image files or folders (default: the shared '
                 'imagenet_samples)')
  s.add_argument('--synsets', default=None,
                 help='boxes: wnid per line in class order (default: the '
                 'shared imagenet_synsets.txt)')
  s.add_argument('--clip_boxes', action='store_true',
                 help='boxes: clip boxes overhanging the image instead of '
                 'failing')
  s.add_argument('--examples', type=int, default=4,
                 help='boxes: images drawn in masking_examples.png')
  s.add_argument('--remove', default=None,
                 help='center_box_patches: background (default) | '
                 'foreground, the patches removed')
  s.add_argument('--fractions', default=None,
                 help='center_box_patches: shares removed '
                 '(default 0,0.25,0.5,0.75,1)')
  s.add_argument('--patch_px', type=int, default=None,
                 help='center_box_patches: patch size (default: the '
                 'model\'s patch)')
  s = sub.add_parser('compare', help='curves of several result JSONs',
                     description='Draws the top-1 curves of several lowpass '
                     '/ center_box_patches masking results (same x values) '
                     'in one figure: DIR/NAME.png and DIR/NAME.json.')
  s.add_argument('--out', required=True, help='output folder')
  s.add_argument('--name', default='compare',
                 help='file name of the figure and JSON (default '
                 '%(default)s)')
  s.add_argument('--xlabel', default='',
                 help='x-axis label (default: the first result\'s)')
  s.add_argument('--title', default='', help='figure title')
  s.add_argument('--relative', action='store_true',
                 help='divide each curve by its value at the first x')
  s.add_argument('results', nargs='+', metavar='RESULT.json',
                 help='lowpass.json / masking_*.json files of earlier runs')
  return p


COMMANDS = {'attention': cmd_attention, 'embeddings': cmd_embeddings,
            'featvis': cmd_featvis, 'spatial': cmd_spatial, 'cls': cmd_cls,
            'lowpass': cmd_lowpass, 'masking': cmd_masking,
            'compare': cmd_compare}


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parser().parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  try:
    result = COMMANDS[args.cmd](args)
  except validate.AnalysisError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  result.setdefault('seconds_total', round(time.time() - t0, 1))
  if args.cmd != 'compare':
    result.update({k: v for k, v in _meta(args).items() if k not in result})
  path = os.path.join(args.out, f'{_json_name(args)}.json')
  _write_json(path, result)
  print(f'wrote {path}')
  for f in result.get('figures', []):
    print(f'wrote {f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
