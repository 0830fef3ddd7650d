"""tf.data input: image folders, tfds (mocked), digits; sharding, resume."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import common
from vit_jax.data import input_pipeline as ip


def make_folder(root, n_per_class=(5, 3, 4), size=(10, 12)):
  rng = np.random.RandomState(0)
  for split in ('train', 'test'):
    for c, n in enumerate(n_per_class):
      d = root / split / f'class_{c}'
      d.mkdir(parents=True)
      for i in range(n):
        px = np.full((*size, 3), 40 * c, np.uint8) + rng.randint(
            0, 20, (*size, 3)).astype(np.uint8)
        Image.fromarray(px).save(d / f'{i:03d}.png')
  return root


def folder_config(root, **kw):
  return common.data_config(
      dataset=f'folder:{root}', train_split='train', eval_split='test',
      pp_train='decode|random_crop(8)|flip_lr|value_range(-1,1)',
      pp_eval='decode|central_crop(8)|value_range(-1,1)', shuffle_buffer=16,
      **kw)


def test_folder_info_batches_and_labels(tmp_path):
  data = folder_config(make_folder(tmp_path))
  info = ip.dataset_info(data)
  assert (info.num_classes, info.num_train, info.num_eval) == (3, 12, 12)
  assert info.class_names == ('class_0', 'class_1', 'class_2')
  b = next(ip.train_iterator(data, global_batch_size=6, seed=0))
  assert b['image'].shape == (6, 8, 8, 3) and b['image'].dtype == np.float32
  assert -1 <= b['image'].min() and b['image'].max() <= 1
  # pixel level encodes the class (40 * c + noise < 20)
  level = np.round((b['image'].mean((1, 2, 3)) + 1) * 127.5 / 40 - 0.12)
  np.testing.assert_array_equal(level, b['label'])


def test_resume_equals_straight_run(tmp_path):
  data = folder_config(make_folder(tmp_path))
  straight = ip.train_iterator(data, global_batch_size=4, seed=7)
  batches = [next(straight) for _ in range(8)]  # > 2 epochs of 12
  resumed = ip.train_iterator(data, global_batch_size=4, seed=7,
                              start_step=5)
  for k in range(5, 8):
    b = next(resumed)
    np.testing.assert_array_equal(b['image'], batches[k]['image'])
    np.testing.assert_array_equal(b['label'], batches[k]['label'])
  other = next(ip.train_iterator(data, global_batch_size=4, seed=8))
  assert not np.array_equal(other['image'], batches[0]['image'])


def test_each_epoch_is_a_new_permutation(tmp_path):
  data = folder_config(make_folder(tmp_path))
  data.pp_train = 'decode|value_range(-1,1)'  # no augmentation
  it = ip.train_iterator(data, global_batch_size=4, seed=0)
  epochs = []
  for _ in range(2):
    ims = np.concatenate([next(it)['image'] for _ in range(3)])  # 12 / 4
    epochs.append([im.tobytes() for im in ims])
  assert len(set(epochs[0])) == 12 and set(epochs[0]) == set(epochs[1])
  assert epochs[0] != epochs[1]  # reshuffled, seeded by (seed, epoch)


@pytest.mark.parametrize('cache', [True, False])
def test_cache_keeps_decoded_images(tmp_path, cache):
  root = make_folder(tmp_path)
  data = folder_config(root, cache=cache, prefetch=1)
  it = ip.train_iterator(data, global_batch_size=4, seed=0)
  for _ in range(3):  # one epoch: every file read and decoded once
    next(it)
  for f in root.glob('train/*/*.png'):
    f.unlink()
  def later_epochs():
    for _ in range(9):
      next(it)
  if cache:
    later_epochs()  # served from memory
  else:
    with pytest.raises(Exception, match='(?i)not found|no such file'):
      later_epochs()


def test_eval_covers_every_example_once_across_processes(tmp_path):
  data = folder_config(make_folder(tmp_path, n_per_class=(4, 3, 4)))
  seen, counts = [], []
  for pi in range(2):
    batches = list(ip.eval_iterator(data, global_batch_size=4,
                                    process_index=pi, process_count=2))
    counts.append(len(batches))
    for b in batches:
      assert b['image'].shape[0] == 2
      seen += [(float(im.sum()), int(l)) for im, l, m in
               zip(b['image'], b['label'], b['mask']) if m]
  assert counts[0] == counts[1]  # every process runs the same number
  assert len(seen) == 11 and len(set(seen)) == 11
  assert sorted(l for _, l in seen) == [0] * 4 + [1] * 3 + [2] * 4


def test_train_shards_are_disjoint(tmp_path):
  data = folder_config(make_folder(tmp_path), cache=False)
  data.pp_train = 'decode|value_range(-1,1)'
  data.shuffle_buffer = 1  # first local batch = the shard in file order
  firsts = []
  for pi in range(2):
    it = ip.train_iterator(data, global_batch_size=12, seed=0,
                           process_index=pi, process_count=2)
    b = next(it)  # local batch 6 = the whole shard
    firsts.append({im.tobytes() for im in b['image']})
  assert not firsts[0] & firsts[1]
  assert len(firsts[0] | firsts[1]) == 12


def test_tfds_mocked():
  data = common.data_config(
      dataset='cifar10', train_split='train[:90%]', eval_split='test',
      pp_train='decode|random_crop(28)|flip_lr|value_range(-1,1)',
      pp_eval='decode|central_crop(28)|value_range(-1,1)', shuffle_buffer=10)
  with tfds.testing.mock_data(num_examples=20):
    info = ip.dataset_info(data)
    assert info.num_classes == 10
    b = next(ip.train_iterator(data, global_batch_size=8, seed=0))
    assert b['image'].shape == (8, 28, 28, 3)
    ev = list(ip.eval_iterator(data, global_batch_size=8))
    assert sum(int(e['mask'].sum()) for e in ev) == info.num_eval


def test_digits_embedded_default():
  data = common.data_config(dataset='digits', train_split='train',
                            eval_split='test', pp_train='resize(16)|'
                            'value_range(-1,1)', pp_eval='resize(16)|'
                            'value_range(-1,1)', shuffle_buffer=100)
  info = ip.dataset_info(data)
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 1500, 297)
  b = next(ip.train_iterator(data, global_batch_size=32, seed=0))
  assert b['image'].shape == (32, 16, 16, 3)
  assert len(set(b['label'].tolist())) > 3


def test_real_cifar10_folder(shared_data):
  data = common.data_config(
      dataset=f'folder:{shared_data}/cifar10', train_split='train',
      eval_split='test', pp_train='decode|value_range(-1,1)',
      pp_eval='decode|value_range(-1,1)', shuffle_buffer=1000, cache=False)
  info = ip.dataset_info(data)
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 50_000,
                                                              10_000)
  assert info.class_names[0] == 'airplane' and info.class_names[-1] == 'truck'
  b = next(ip.train_iterator(data, global_batch_size=256, seed=0))
  assert b['image'].shape == (256, 32, 32, 3)
  assert len(set(b['label'].tolist())) == 10  # classes are interleaved


@pytest.mark.parametrize('dataset,match', [
    ('folder:/nonexistent/x', 'does not exist'),
    ('cifar11', 'not a tfds dataset'),
])
def test_bad_datasets(dataset, match):
  data = common.data_config(dataset=dataset, train_split='train',
                            eval_split='test')
  with pytest.raises(ValueError, match=match):
    ip.dataset_info(data)


def test_missing_split_names_the_existing_ones(tmp_path):
  data = folder_config(make_folder(tmp_path))
  data.eval_split = 'validation'
  with pytest.raises(ValueError,
                     match='split .validation.*splits here: test, train'):
    ip.dataset_info(data)


def test_tfds_dirs_are_honoured(monkeypatch, tmp_path):
  seen = {}

  class FakeBuilder:
    def download_and_prepare(self, download_config):
      seen['manual_dir'] = download_config.manual_dir
      raise OSError('no internet')

  def fake_builder(name, data_dir=None):
    seen['name'], seen['data_dir'] = name, data_dir
    fb = FakeBuilder()
    fb.data_dir = data_dir
    return fb

  monkeypatch.setattr(tfds, 'builder', fake_builder)
  data = common.data_config(dataset='imagenet2012',
                            tfds_data_dir=str(tmp_path / 'tfds'),
                            tfds_manual_dir=str(tmp_path / 'manual'))
  with pytest.raises(ValueError, match='imagenet2012.*not prepared'):
    ip.dataset_info(data)
  assert seen == {'name': 'imagenet2012', 'data_dir': str(tmp_path / 'tfds'),
                  'manual_dir': str(tmp_path / 'manual')}


# --- One class map (the training split's), listing, unreadable files.


def write_levels(root, spec, size=(4, 4)):
  """root/split/class/i.png for spec {split: {class: n}}; every pixel of a
  class-c image is 20 * level[c], level = c's position in the sorted classes
  of 'train' (so a correct label is readable off the pixels)."""
  order = sorted(spec['train'])
  for split, classes in spec.items():
    for c, n in classes.items():
      d = root / split / c
      d.mkdir(parents=True)
      for i in range(n):
        level = 20 * order.index(c) if c in order else 250
        Image.fromarray(np.full((*size, 3), level, np.uint8)).save(
            d / f'{i}.png')
  return root


def pixel_labels(data):
  """(labels, 20-level of the pixels) of every unpadded eval example."""
  labels, levels = [], []
  for b in ip.eval_iterator(data, global_batch_size=4):
    m = b['mask']
    labels += b['label'][m].tolist()
    levels += np.round(b['image'][m].mean((1, 2, 3)) / 20).astype(int).tolist()
  return labels, levels


def level_config(root):
  return common.data_config(
      dataset=f'folder:{root}', train_split='train', eval_split='test',
      pp_train='decode|value_range(0,255)', pp_eval='decode|value_range(0,255)',
      shuffle_buffer=8)


def test_eval_labels_use_the_training_class_map(tmp_path):
  """test/ lacks 'automobile': its 'bird' must keep train's label 2."""
  root = write_levels(tmp_path, {
      'train': {'airplane': 2, 'automobile': 2, 'bird': 2},
      'test': {'airplane': 3, 'bird': 3}})
  data = level_config(root)
  info = ip.dataset_info(data)
  assert info.class_names == ('airplane', 'automobile', 'bird')
  labels, levels = pixel_labels(data)
  assert sorted(labels) == [0, 0, 0, 2, 2, 2] and labels == levels


def test_eval_class_that_training_lacks_is_an_error(tmp_path):
  root = write_levels(tmp_path, {'train': {'cat': 2, 'dog': 2},
                                 'test': {'cat': 1, 'zebra': 1}})
  with pytest.raises(ValueError, match=r"class folder .*test/zebra.* not a "
                     r"class of the training split 'train' \(2 classes: cat, "
                     r'dog\)') as e:
    list(ip.eval_iterator(level_config(root), global_batch_size=4))
  assert '\n' not in str(e.value)


def test_empty_training_class_folder_is_an_error(tmp_path):
  root = write_levels(tmp_path, {'train': {'cat': 2, 'dog': 2},
                                 'test': {'cat': 1, 'dog': 1}})
  (root / 'train' / 'bird').mkdir()
  (root / 'train' / 'bird' / 'notes.txt').write_text('todo')
  with pytest.raises(ValueError, match=r'class folder .*train/bird has no '
                     r'images \(\.jpg'):
    ip.dataset_info(level_config(root))


def test_only_image_files_are_examples(tmp_path):
  root = write_levels(tmp_path, {'train': {'cat': 2, 'dog': 2},
                                 'test': {'cat': 1, 'dog': 1}})
  cat = root / 'train' / 'cat'
  (cat / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')
  (cat / '._0.png').write_bytes(b'\x00\x05\x16\x07')  # macOS resource fork
  (cat / 'readme.txt').write_text('cats')
  Image.fromarray(np.full((4, 4, 3), 0, np.uint8)).save(cat / 'UPPER.PNG')
  (root / 'train' / '.ipynb_checkpoints').mkdir()  # a hidden "class"
  data = level_config(root)
  info = ip.dataset_info(data)
  assert (info.class_names, info.num_train) == (('cat', 'dog'), 5)
  b = next(ip.train_iterator(data, global_batch_size=5, seed=0))
  assert sorted(b['label'].tolist()) == [0, 0, 0, 1, 1]


def test_unreadable_image_is_one_line_naming_it(tmp_path):
  root = write_levels(tmp_path, {'train': {'cat': 3, 'dog': 3},
                                 'test': {'cat': 1, 'dog': 1}})
  (root / 'train' / 'dog' / 'oops.jpg').write_text('<html>not a jpeg</html>')
  with pytest.raises(ValueError, match=r'cannot read image .*train/dog/'
                     r'oops\.jpg: ') as e:
    next(ip.train_iterator(level_config(root), global_batch_size=2, seed=0))
  assert '\n' not in str(e.value)


def test_truncated_jpeg_is_named(tmp_path):
  """A JPEG whose header is fine but whose data stops: TF's decoder fails
  inside the pipeline, and the file is still named in one line."""
  root = write_levels(tmp_path, {'train': {'cat': 3, 'dog': 3},
                                 'test': {'cat': 1, 'dog': 1}})
  rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
  Image.fromarray(rgb).save(root / 'train' / 'cat' / 'cut.jpg', quality=95)
  jpg = (root / 'train' / 'cat' / 'cut.jpg').read_bytes()
  (root / 'train' / 'cat' / 'cut.jpg').write_bytes(jpg[:len(jpg) // 2])
  with pytest.raises(ValueError, match=r'cannot read image .*train/cat/'
                     r'cut\.jpg: .*truncated') as e:
    for _ in ip.train_iterator(level_config(root), global_batch_size=2,
                               seed=0):
      pass
  assert '\n' not in str(e.value)


def test_folder_decodes_every_file_as_predict_does(tmp_path):
  """The training folder reader gives the pixels of `images.decode_rgb`
  (checked against numpy / PIL): a palette BMP (colours, not indices), a
  16-bit PNG (v >> 8), a TIFF, colour, grey and CMYK JPEGs (PIL's decoder,
  as predict: TF's default fast IDCT differs by up to 5 levels)."""
  rng = np.random.default_rng(0)
  palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
  index = rng.integers(0, 4, (8, 8), dtype=np.uint8)
  u16 = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
  rgb = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
  for split in ('train', 'test'):
    d = tmp_path / split
    for c in ('a_bmp', 'b_png16', 'c_tif', 'd_jpg', 'e_grey_jpg',
              'f_cmyk_jpg'):
      (d / c).mkdir(parents=True)
    pal = Image.fromarray(index, 'P')
    pal.putpalette(palette.tobytes())
    pal.save(d / 'a_bmp' / 'x.bmp')
    Image.fromarray(u16).save(d / 'b_png16' / 'x.png')
    Image.fromarray(rgb[..., :3]).save(d / 'c_tif' / 'x.tif')
    Image.fromarray(rgb[..., :3]).save(d / 'd_jpg' / 'x.jpg', quality=90)
    Image.fromarray(rgb[..., 0]).save(d / 'e_grey_jpg' / 'x.jpg')
    Image.fromarray(rgb, 'CMYK').save(d / 'f_cmyk_jpg' / 'x.jpg')
  jpegs = []
  for c in ('d_jpg', 'e_grey_jpg', 'f_cmyk_jpg'):
    with Image.open(tmp_path / 'test' / c / 'x.jpg') as im:
      jpegs.append(np.asarray(im.convert('RGB')))
  want = [palette[index], np.repeat((u16 >> 8)[..., None], 3, -1),
          rgb[..., :3]] + jpegs
  data = level_config(tmp_path)
  (b,) = list(ip.eval_iterator(data, global_batch_size=6))
  assert sorted(b['label'].tolist()) == list(range(6))
  for image, label in zip(b['image'], b['label']):
    np.testing.assert_array_equal(image, want[label])


def test_pp_error_is_not_blamed_on_a_file(tmp_path, capfd):
  """A crop larger than the images fails in TF; no file is named for it and
  the files are not searched."""
  root = write_levels(tmp_path, {'train': {'cat': 2, 'dog': 2},
                                 'test': {'cat': 1, 'dog': 1}})
  data = level_config(root)
  data.pp_train = 'decode|random_crop(64)|value_range(0,1)'
  with pytest.raises(Exception) as e:
    next(ip.train_iterator(data, global_batch_size=2, seed=0))
  assert not isinstance(e.value, ValueError)
  assert 'finding the file' not in capfd.readouterr().err
