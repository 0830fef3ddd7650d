"""The `python -m vit_jax.analysis` CLI on a tiny model and tiny image folder:
files written, numbers in the JSON, one-line errors naming allowed ranges."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import random_image_folder
from tests.tiny_configs import ANALYSIS_MODEL as MU
from vit_jax.analysis import cli

# Compiles of the tiny model dominate (conftest fixture).
pytestmark = pytest.mark.usefixtures('fast_compile')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """<root>/<class>/<n>.png, 2 classes x 3 images of 32x32."""
  return random_image_folder(tmp_path_factory.mktemp('imgs'), ('cat', 'dog'),
                             3)


def _run(argv, capsys):
  rc = cli.main(argv)
  cap = capsys.readouterr()
  return rc, cap.err.strip().splitlines()


def test_attention_writes_figures_and_numbers(folder, tmp_path, capsys):
  rc, _ = _run(['attention', '--out', str(tmp_path), *MU, '--images',
                str(folder / 'cat'), '--limit', '2'], capsys)
  assert rc == 0
  res = json.loads((tmp_path / 'attention.json').read_text())
  assert np.asarray(res['mean_distance_px']).shape == (2, 2)
  # the prediction the figure titles show: mu/16 has 1,000 classes
  assert len(res['predicted_name']) == 2
  assert all(0 < p <= 1 for p in res['predicted_probability'])
  assert (tmp_path / 'rollout.png').stat().st_size > 1000
  assert (tmp_path / 'attention_0.png').exists()


def test_embeddings(tmp_path, capsys):
  rc, _ = _run(['embeddings', '--out', str(tmp_path), *MU,
                '--components', '4'], capsys)
  assert rc == 0
  res = json.loads((tmp_path / 'embeddings.json').read_text())
  assert len(res['explained_variance']) == 4
  assert (tmp_path / 'posemb_similarity.png').exists()
  assert (tmp_path / 'patch_pca.png').exists()


def test_lowpass_masking_and_compare(folder, tmp_path, capsys):
  for cmd, extra in (('lowpass', ['--fractions', '1,0.1']),
                     ('masking', ['--protocol', 'center_box_patches',
                                  '--fractions', '0,1'])):
    rc, _ = _run([cmd, '--out', str(tmp_path), *MU, '--num_classes', '2',
                  '--data', str(folder), '--batch_size', '4', *extra], capsys)
    assert rc == 0
  low = json.loads((tmp_path / 'lowpass.json').read_text())
  mask = json.loads((tmp_path / 'masking_center_box_patches_background_'
                     'removed.json').read_text())
  assert mask['removed'] == 'background'
  assert mask['left_at_fraction_1'] == 'foreground only'
  assert low['x'] == [1.0, 0.1] and len(low['top1']) == 2
  # fraction 0 masks nothing and low-pass 1 filters nothing: same accuracy
  assert mask['top1'][0] == low['top1'][0]
  rc, _ = _run(['masking', '--out', str(tmp_path), *MU, '--num_classes', '2',
                '--data', str(folder), '--batch_size', '4', '--protocol',
                'center_box_patches', '--remove', 'foreground',
                '--fractions', '0,1'], capsys)
  assert rc == 0
  rc, _ = _run(['compare', '--out', str(tmp_path), '--name', 'both',
                *(str(tmp_path / f'masking_center_box_patches_{r}_removed.json')
                  for r in ('background', 'foreground'))], capsys)
  assert rc == 0 and (tmp_path / 'both.png').exists()
  both = json.loads((tmp_path / 'both.json').read_text())
  assert list(both['top1']) == ['mu/16, background patches removed',
                                'mu/16, foreground patches removed']


def test_cls_every_k_with_mode_and_figure(folder, tmp_path, capsys):
  rc, _ = _run(['cls', '--out', str(tmp_path), *MU, '--num_classes', '2',
                '--data', str(folder), '--batch_size', '4'], capsys)
  assert rc == 0
  res = json.loads((tmp_path / 'cls.json').read_text())
  assert res['mode'] == 'alone' and 'alone' in res['protocol']
  assert list(res['top1_by_insert_layer']) == ['0', '1', '2']  # k = 0..L
  # k = L: one class for every image; 3 of the 6 images are of each class
  assert res['top1_by_insert_layer']['2'] == 50.0
  assert (tmp_path / 'cls_alone.png').stat().st_size > 1000


def test_featvis_and_spatial(folder, tmp_path, capsys):
  rc, _ = _run(['featvis', '--out', str(tmp_path), *MU, '--features',
                'mlp:1:1,mlp:1:2', '--steps', '3', '--copies', '2',
                '--jitter', '2'], capsys)
  assert rc == 0
  res = json.loads((tmp_path / 'featvis.json').read_text())
  assert set(res['features']) == {'mlp_L1_u1', 'mlp_L1_u2'}
  assert (tmp_path / 'featvis.png').exists()
  rc, _ = _run(['spatial', '--out', str(tmp_path), *MU, '--images',
                str(folder / 'dog' / '0.png'), '--per_side', '1',
                '--layers', '1'], capsys)
  assert rc == 0
  res = json.loads((tmp_path / 'spatial.json').read_text())
  assert len(res['locality_own']) == 1


@pytest.mark.parametrize('argv,message', [
    (['attention', '--layers', '5', '--images', 'IMG'],
     'layer 5 is out of range: allowed 0..1'),
    (['attention', '--heads', '2', '--images', 'IMG'],
     'head 2 is out of range: allowed 0..1'),
    (['attention', '--images', '/nonexistent.jpg'],
     'image missing: no such file or directory: /nonexistent.jpg'),
    (['featvis', '--features', 'mlp:0:128'],
     'mlp feature index 128 is out of range: allowed 0..127'),
    (['featvis', '--features', 'mlp:2:0'],
     'layer 2 is out of range: allowed 0..1'),
    (['featvis', '--features', 'mlp-0-1'], 'expected KIND:LAYER:INDEX'),
    (['spatial', '--index', '999', '--images', 'IMG'],
     'mlp feature index 999 is out of range: allowed 0..127'),
    (['cls', '--layers', '3', '--data', 'FOLDER'],
     'insertion layer 3 is out of range: allowed 0..2'),
    (['cls', '--mode', 'late', '--data', 'FOLDER'],
     "mode 'late' is not known: allowed alone, raw"),
    (['lowpass', '--fractions', '2', '--data', 'FOLDER'],
     'cut-off 2.0 is out of range: allowed 0.0..1.0'),
    (['masking', '--protocol', 'center_box_patches', '--remove', 'sky',
      '--data', 'FOLDER'],
     "removed region 'sky' is not known: allowed background, foreground"),
    (['masking', '--protocol', 'boxes_please'],
     "protocol 'boxes_please' is not known: allowed boxes, "
     'center_box_patches'),
    (['masking', '--images', 'FOLDER'], '--protocol boxes needs --boxes'),
    (['masking', '--boxes', 'BOXES', '--fractions', '0,1'],
     '--fractions belongs to --protocol center_box_patches'),
    (['masking', '--protocol', 'center_box_patches', '--boxes', 'BOXES'],
     '--boxes belongs to --protocol boxes'),
])
def test_bad_input_is_one_line(argv, message, folder, tmp_path, capsys):
  argv = [a.replace('IMG', str(folder / 'cat' / '0.png')).replace(
      'FOLDER', str(folder)).replace('BOXES', str(tmp_path)) for a in argv]
  rc, err = _run([argv[0], '--out', str(tmp_path), *MU, *argv[1:]], capsys)
  assert rc == 1
  assert len(err) == 1 and err[0].startswith('error: ')
  assert message in err[0]


@pytest.fixture(scope='module')
def boxed(tmp_path_factory):
  """Two 48x40 photos named by wnid, their XML boxes and a synsets file."""
  root = tmp_path_factory.mktemp('boxed')
  rng = np.random.default_rng(1)
  (root / 'img').mkdir()
  for name in ('n01440764_a', 'n01443537_b', 'n01443537_nobox'):
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(
        root / 'img' / f'{name}.png')
  (root / 'synsets.txt').write_text('n01440764\nn01443537\n')
  (root / 'boxes').mkdir()
  for name, wnid, box in (('n01440764_a', 'n01440764', '1 1 48 40'),
                          ('n01443537_b', 'n01443537', '5 6 20 30')):
    x0, y0, x1, y1 = box.split()
    (root / 'boxes' / f'{name}.xml').write_text(
        f'<annotation><filename>{name}.png</filename><size><width>48'
        f'</width><height>40</height></size><object><name>{wnid}</name>'
        f'<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>'
        f'<ymax>{y1}</ymax></bndbox></object></annotation>')
  return root


def test_masking_with_boxes_end_to_end(boxed, tmp_path, capsys):
  rc, _ = _run(['masking', '--out', str(tmp_path), *MU, '--num_classes', '2',
                '--boxes', str(boxed / 'boxes'), '--images',
                str(boxed / 'img'), '--synsets', str(boxed / 'synsets.txt'),
                '--batch_size', '2'], capsys)
  assert rc == 0
  res = json.loads((tmp_path / 'masking.json').read_text())
  assert res['protocol'] == 'boxes' and res['images'] == 2
  assert res['skipped'] == {'no_annotation': 1, 'no_own_class_box': 0}
  assert set(res['top1']) == {'original', 'background_only',
                              'foreground_only'}
  assert all(v == 100.0 for v in res['top5'].values())  # 2 classes
  whole, part = res['per_image']
  assert (whole['image'], whole['label'], part['label']) == (
      'n01440764_a.png', 0, 1)
  # a box of the whole image: foreground only is the original image
  assert whole['foreground_share'] == 1.0
  assert whole['predicted']['foreground_only'] == whole['predicted'][
      'original']
  assert part['foreground_share'] == round(16 * 25 / (48 * 40), 4)
  for f in ('masking_examples.png', 'masking_top1.png'):
    assert (tmp_path / f).stat().st_size > 1000


def test_masking_box_outside_the_image_is_one_line(boxed, tmp_path, capsys):
  (tmp_path / 'n01440764_a.xml').write_text(
      '<annotation><object><name>n01440764</name><bndbox><xmin>1</xmin>'
      '<ymin>1</ymin><xmax>49</xmax><ymax>40</ymax></bndbox></object>'
      '</annotation>')
  argv = ['masking', '--out', str(tmp_path), *MU, '--num_classes', '2',
          '--boxes', str(tmp_path / 'n01440764_a.xml'), '--images',
          str(boxed / 'img'), '--synsets', str(boxed / 'synsets.txt')]
  rc, err = _run(argv, capsys)
  assert rc == 1 and len(err) == 1
  assert 'n01440764_a.xml object 0: box n01440764' in err[0]
  assert 'lies outside the image' in err[0] and '48x40' in err[0]
  rc, _ = _run(argv + ['--clip_boxes'], capsys)
  assert rc == 0
  res = json.loads((tmp_path / 'masking.json').read_text())
  assert res['boxes_clipped'] == 1 and res['images'] == 1
  assert res['per_image'][0]['foreground_share'] == 1.0  # clipped to 48x40


def test_prediction_words_for_figure_titles(tmp_path):
  assert cli._percent(0.934) == '93\u00a0%'
  assert cli._percent(0.9983) == '99.8\u00a0%'  # never a rounded 100 %
  assert cli._percent(0.004) == '0.4\u00a0%'
  top, prob = cli._predictions(np.array([[0.0, np.log(3.0)], [5.0, 5.0]]))
  assert top.tolist() == [1, 0]
  np.testing.assert_allclose(prob, [0.75, 0.5])
  (tmp_path / 'classes.json').write_text(json.dumps(['cat', 'dog']))
  workdir = argparse.Namespace(checkpoint=str(tmp_path))
  assert cli._class_names(workdir, 2) == ['cat', 'dog']
  # a head of another size than classes.json: numbered classes
  assert cli._class_names(workdir, 3) == ['class 0', 'class 1', 'class 2']


def test_imagenet_class_names_match_timm(shared_data):
  from timm.data import ImageNetInfo  # pylint: disable=g-import-not-at-top
  names = cli._class_names(argparse.Namespace(checkpoint=None), 1000)
  info = ImageNetInfo()
  assert names == [info.index_to_description(i).split(',')[0]
                   for i in range(1000)]
  assert names[207] == 'golden retriever'


def test_compare_x_label_names_each_window():
  circle = {'window': 'circle', 'xlabel': 'cut-off (fraction of the radius)'}
  rect = {'window': 'rectangle', 'xlabel': 'cut-off (fraction of Nyquist)'}
  assert cli._compare_xlabel([circle, rect]) == (
      'cut-off (circle: fraction of the radius; rectangle: fraction of '
      'Nyquist)')
  assert cli._compare_xlabel([circle, dict(circle)]) == circle['xlabel']
  assert cli._compare_xlabel([{'xlabel': 'a'}, {'xlabel': 'b'}]) == 'a / b'
