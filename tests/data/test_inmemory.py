"""Tests of vit_jax.data.inmemory: the input contract on a small JPEG folder
(shapes, value range, labels, deterministic resume, process shards, eval
padding), its pp ops, and its errors."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vit_jax.data import inmemory


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('imgs')
  rng = np.random.default_rng(0)
  for split, n in (('train', 7), ('test', 3)):
    for c in ('cat', 'dog', 'emu'):
      (root / split / c).mkdir(parents=True)
      for i in range(n):
        im = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(im).save(root / split / c / f'{i}.png')
  return root


def data(folder, **kw):
  d = dict(dataset=f'inmemory:{folder}', train_split='train',
           eval_split='test',
           pp_train='decode|resize(10)|random_crop(8)|flip_lr|'
                    'value_range(-1,1)',
           pp_eval='decode|resize(8)|value_range(-1,1)')
  d.update(kw)
  return ml_collections.ConfigDict(d)


def test_info(folder):
  info = inmemory.dataset_info(data(folder))
  assert (info.num_classes, info.num_train, info.num_eval) == (3, 21, 9)
  assert info.class_names == ('cat', 'dog', 'emu')


def test_train_batches_and_resume(folder):
  it = inmemory.train_iterator(data(folder), global_batch_size=6,
                                     seed=3)
  batches = [next(it) for _ in range(8)]  # crosses epochs (21 examples)
  b = batches[0]
  assert b['image'].shape == (6, 8, 8, 3) and b['image'].dtype == np.float32
  assert b['label'].dtype == np.int32
  assert -1 <= b['image'].min() and b['image'].max() <= 1
  # Each epoch visits every example once: labels over the first 3 batches +
  # 3 of the 4th are a permutation of 7 x (0, 1, 2).
  first_epoch = np.concatenate([x['label'] for x in batches[:3]] +
                               [batches[3]['label'][:3]])
  assert sorted(np.bincount(first_epoch)) == [7, 7, 7]
  resumed = inmemory.train_iterator(data(folder), global_batch_size=6,
                                          seed=3, start_step=5)
  for k in range(5, 8):
    r = next(resumed)
    np.testing.assert_array_equal(r['image'], batches[k]['image'])
    np.testing.assert_array_equal(r['label'], batches[k]['label'])
  other = next(inmemory.train_iterator(data(folder),
                                             global_batch_size=6, seed=4))
  assert not np.array_equal(other['image'], b['image'])


def test_process_shards_concatenate_to_global(folder):
  kw = dict(global_batch_size=6, seed=1, start_step=2)
  whole = next(inmemory.train_iterator(data(folder), process_index=0,
                                             process_count=1, **kw))
  parts = [next(inmemory.train_iterator(data(folder), process_index=i,
                                              process_count=2, **kw))
           for i in range(2)]
  assert parts[0]['image'].shape[0] == 3
  np.testing.assert_array_equal(
      np.concatenate([p['image'] for p in parts]), whole['image'])


def test_eval_pads_and_masks(folder):
  batches = list(inmemory.eval_iterator(data(folder),
                                              global_batch_size=4))
  assert len(batches) == 3
  assert [int(b['mask'].sum()) for b in batches] == [4, 4, 1]
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  assert list(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  # Eval pp is plain bilinear resize + value range.
  src = np.asarray(Image.open(
      sorted((folder / 'test' / 'cat').iterdir())[0]).convert('RGB'))
  want = np.asarray(Image.fromarray(src).resize((8, 8), Image.BILINEAR),
                    np.float32) / 127.5 - 1
  np.testing.assert_allclose(batches[0]['image'][0], want, atol=1e-6)


def test_inception_crop_shape(folder):
  d = data(folder, pp_train='inception_crop(6)|flip_lr|value_range(0,1)')
  b = next(inmemory.train_iterator(d, global_batch_size=3, seed=0))
  assert b['image'].shape == (3, 6, 6, 3)
  assert 0 <= b['image'].min() and b['image'].max() <= 1


def test_errors(folder, tmp_path):
  with pytest.raises(ValueError, match=r"pp op 'blur\(3\)'.*allowed: .*decode"):
    next(inmemory.train_iterator(data(folder, pp_train='blur(3)'),
                                       global_batch_size=3, seed=0))
  with pytest.raises(ValueError, match=r'is not a directory'):
    inmemory.dataset_info(data(tmp_path / 'nope'))


def test_digits_embedded():
  d = ml_collections.ConfigDict(dict(
      dataset='inmemory:digits', train_split='train', eval_split='test',
      pp_train='decode|resize(16)|value_range(-1,1)',
      pp_eval='decode|value_range(-1,1)'))
  info = inmemory.dataset_info(d)
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 1500, 297)
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  ref = datasets.load_digits()
  test = list(inmemory.eval_iterator(d, global_batch_size=297))[0]
  assert test['image'].shape == (297, 8, 8, 3)
  # Every test image is one of scikit-learn's, with its label.
  flat = np.round((test['image'][..., 0] + 1) / 2 * 16).reshape(297, 64)
  table = {tuple(x): y for x, y in zip(ref.images.reshape(-1, 64),
                                       ref.target)}
  assert all(table[tuple(x)] == y for x, y in zip(flat, test['label']))


# --- The training split's class map, image files only, decoding, errors.


def write_levels(root, spec):
  """root/split/class/i.png, every pixel 20 * (position of the class among
  the sorted training classes): the right label is readable off the image."""
  order = sorted(spec['train'])
  for split, classes in spec.items():
    for c, n in classes.items():
      (root / split / c).mkdir(parents=True)
      level = 20 * order.index(c) if c in order else 250
      for i in range(n):
        Image.fromarray(np.full((4, 4, 3), level, np.uint8)).save(
            root / split / c / f'{i}.png')
  return root


def level_data(root):
  return data(root, pp_train='decode|value_range(0,255)',
              pp_eval='decode|value_range(0,255)')


def test_eval_labels_use_the_training_class_map(tmp_path):
  root = write_levels(tmp_path, {'train': {'a': 1, 'b': 1, 'c': 1},
                                 'test': {'a': 2, 'c': 2}})
  (b,) = list(inmemory.eval_iterator(level_data(root),
                                           global_batch_size=4))
  assert b['label'].tolist() == [0, 0, 2, 2]
  np.testing.assert_array_equal(b['image'].mean((1, 2, 3)) / 20, b['label'])


def test_class_errors_name_the_folder(tmp_path):
  root = write_levels(tmp_path, {'train': {'a': 1, 'b': 1},
                                 'test': {'a': 1, 'zebra': 1}})
  with pytest.raises(ValueError, match=r'class folder .*test/zebra is not a '
                     r"class of the training split 'train'"):
    inmemory.dataset_info(level_data(root))
  (root / 'train' / 'empty').mkdir()
  with pytest.raises(ValueError, match=r'class folder .*train/empty has no '
                     'images'):
    inmemory.dataset_info(level_data(root))


def test_non_images_skipped_bad_images_named(tmp_path):
  root = write_levels(tmp_path, {'train': {'a': 2, 'b': 2},
                                 'test': {'a': 1, 'b': 1}})
  (root / 'train' / 'a' / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
  (root / 'train' / 'a' / 'readme.txt').write_text('a')
  info = inmemory.dataset_info(level_data(root))
  assert (info.num_train, info.num_eval) == (4, 2)
  (root / 'test' / 'b' / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\nshort')
  with pytest.raises(ValueError, match=r'cannot read image .*test/b/bad\.png'
                     ) as e:
    inmemory.dataset_info(level_data(root))
  assert '\n' not in str(e.value)


def test_16bit_png_is_scaled_not_white(tmp_path):
  root = write_levels(tmp_path, {'train': {'a': 1}, 'test': {'a': 1}})
  v = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369  # 0 .. 65535
  Image.fromarray(v).save(root / 'train' / 'a' / '0.png')  # mode I;16
  b = next(inmemory.train_iterator(level_data(root),
                                         global_batch_size=1, seed=0))
  np.testing.assert_array_equal(b['image'][0, ..., 1], v >> 8)
