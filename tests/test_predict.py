"""`python -m vit_jax.predict`: the released ViT-Ti/16 on 1,000 real photos,
and the one-line errors.

Reference (../shared/data/README.md): timm, same weights, same files:
82.7 % top-1 at 224 (resize 248 + center crop); 80.1 % at 384 with the
position embeddings resampled bilinearly.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vit_jax.checkpoints import npz
from vit_jax import models

CKPT = 'checkpoints/ViT-Ti_16-augreg-i21k-ft-i1k-224.npz'


def run_predict(*args):
  return subprocess.run([sys.executable, '-m', 'vit_jax.predict', *args],
                        capture_output=True, text=True, timeout=900)


def top1_top5(shared, out):
  synsets = (shared / 'imagenet_labels/imagenet_synsets.txt').read_text()
  index = {w: i for i, w in enumerate(synsets.split())}
  rows = [json.loads(line) for line in out.splitlines()]
  truth = [index[os.path.basename(r['image']).split('_')[0]] for r in rows]
  top1 = np.mean([r['top5'][0][0] == t for r, t in zip(rows, truth)])
  top5 = np.mean([t in [c[0] for c in r['top5']] for r, t in zip(rows, truth)])
  return len(rows), top1, top5


def test_released_checkpoint_loads_with_no_key_left_over(shared_data):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  flat = npz.read_npz(str(shared_data / CKPT))
  model = models.get_model('Ti/16', num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 224, 224, 3)))['params']
  ours = {k: v.shape for k, v in npz.flatten(shapes).items()}
  assert ours == {k: v.shape for k, v in flat.items()}
  assert len(flat) == 200
  assert sum(v.size for v in flat.values()) == 5_717_416


def test_predict_imagenet_samples_224(shared_data):
  r = run_predict('--json', '--model=Ti/16',
                  f'--checkpoint={shared_data / CKPT}',
                  f'--labels={shared_data}/imagenet_labels/'
                  'imagenet1k_index_wnid_lemma.tsv',
                  str(shared_data / 'imagenet_samples'))
  assert r.returncode == 0, r.stderr
  n, top1, top5 = top1_top5(shared_data, r.stdout)
  print(f'ViT-Ti/16 @224 on {n} photos: top-1 {top1:.1%}, top-5 {top5:.1%}')
  assert n == 1000
  assert top1 >= 0.80
  assert top5 >= 0.94
  first = json.loads(r.stdout.splitlines()[0])
  assert first['top5'][0][1] == 'tench, Tinca tinca'


def test_predict_imagenet_samples_384_resampled_posemb(shared_data):
  r = run_predict('--json', '--model=Ti/16', '--resolution=384',
                  '--crop_pct=1', f'--checkpoint={shared_data / CKPT}',
                  str(shared_data / 'imagenet_samples'))
  assert r.returncode == 0, r.stderr
  n, top1, _ = top1_top5(shared_data, r.stdout)
  print(f'ViT-Ti/16 @384 (posemb 14x14 -> 24x24) on {n} photos: '
        f'top-1 {top1:.1%}')
  assert n == 1000
  assert top1 >= 0.78


def assert_one_line_error(r, pattern):
  assert r.returncode == 1
  assert 'Traceback' not in r.stderr
  lines = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, r.stderr
  assert pattern in lines[0], lines[0]


def test_errors(tmp_path, shared_data):
  ckpt = str(shared_data / CKPT)
  photo = str(sorted((shared_data / 'imagenet_samples').iterdir())[0])
  assert_one_line_error(
      run_predict('--model=Ti/16', f'--checkpoint={ckpt}',
                  str(tmp_path / 'missing.jpg')),
      'no such file or directory')
  truncated = tmp_path / 'truncated.npz'
  truncated.write_bytes(open(ckpt, 'rb').read()[:1_000_000])
  assert_one_line_error(
      run_predict('--model=Ti/16', f'--checkpoint={truncated}', photo),
      'truncated.npz is not a readable .npz file')
  assert_one_line_error(
      run_predict('--model=S/16', f'--checkpoint={ckpt}', photo),
      'checkpoint has shape (192,), the model expects (384,)')
  assert_one_line_error(
      run_predict('--model=Q/16', f'--checkpoint={ckpt}', photo),
      'unknown model name')
  assert_one_line_error(
      run_predict('--model=Ti/16', f'--checkpoint={tmp_path}/none.npz',
                  photo),
      'no such checkpoint')
  labels = tmp_path / 'labels.txt'
  labels.write_text('a\nb\n')
  assert_one_line_error(
      run_predict('--model=Ti/16', f'--checkpoint={ckpt}',
                  f'--labels={labels}', photo),
      'has 2 labels, the checkpoint has 1000 classes')


def test_text_output_names_the_class(shared_data):
  photo = shared_data / 'imagenet_samples' / 'n01443537_goldfish.JPEG'
  r = run_predict('--model=Ti/16', f'--checkpoint={shared_data / CKPT}',
                  f'--labels={shared_data}/imagenet_labels/'
                  'imagenet1k_index_wnid_lemma.tsv', str(photo))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert lines[0] == str(photo)
  assert lines[1].startswith('  1. goldfish, Carassius auratus (1): ')
  assert len(lines) == 6


def test_one_unreadable_image_does_not_lose_the_others(tmp_path, shared_data):
  """The good photos of the batch are classified, the bad file is named in
  one line, and the exit status says something failed."""
  import shutil  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'photos'
  folder.mkdir()
  for name in ('n01443537_goldfish.JPEG', 'n01530575_brambling.JPEG'):
    shutil.copy(shared_data / 'imagenet_samples' / name, folder / name)
  (folder / 'm_broken.jpg').write_bytes(b'\xff\xd8 definitely not a jpeg')
  r = run_predict('--json', '--model=Ti/16',
                  f'--checkpoint={shared_data / CKPT}', str(folder))
  assert r.returncode == 1
  assert 'Traceback' not in r.stderr
  rows = [json.loads(line) for line in r.stdout.splitlines()]
  assert [os.path.basename(x['image']) for x in rows] == [
      'n01443537_goldfish.JPEG', 'n01530575_brambling.JPEG']
  assert [x['top5'][0][0] for x in rows] == [1, 10]  # goldfish, brambling
  errors = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 2, r.stderr
  assert 'cannot read image' in errors[0] and 'm_broken.jpg' in errors[0]
  assert errors[1] == ('error: 1 of 3 images could not be classified '
                       '(named above)')


def test_nan_weights_are_refused_before_predicting(tmp_path, shared_data):
  flat = npz.read_npz(str(shared_data / CKPT))
  key = 'Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel'
  flat[key] = flat[key].copy()
  flat[key][0, :5] = np.nan
  path = tmp_path / 'nan.npz'
  np.savez(path, **flat)
  photo = shared_data / 'imagenet_samples' / 'n01443537_goldfish.JPEG'
  r = run_predict('--json', '--model=Ti/16', f'--checkpoint={path}',
                  str(photo))
  assert_one_line_error(r, f'{key} holds 5 NaN/Inf value(s)')
  assert r.stdout == ''
