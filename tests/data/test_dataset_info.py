"""The run's class map WORKDIR/classes.json: written by training's setup,
checked when the workdir is used again."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from tests.tiny_configs import train_config
from vit_jax.data import dataset_info
from vit_jax.training import train


def test_written_then_checked(tmp_path):
  dataset_info.save_class_names(str(tmp_path), ('cat', 'dog'))
  assert json.loads((tmp_path / 'classes.json').read_text()) == ['cat',
                                                                 'dog']
  dataset_info.save_class_names(str(tmp_path), ['cat', 'dog'])  # same: ok
  with pytest.raises(ValueError, match=r"classes\.json .*has 2 classes, the "
                     r"data now 3; label 1 was 'dog', is now 'cow'"):
    dataset_info.save_class_names(str(tmp_path), ('cat', 'cow', 'dog'))


def write_folder(root, classes):
  for split in ('train', 'test'):
    for c in classes:
      (root / split / c).mkdir(parents=True, exist_ok=True)
      Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
          root / split / c / '0.png')


def test_training_setup_writes_it_and_refuses_another_class_map(tmp_path):
  """Resuming a workdir after a class folder was added to the training
  split would shift the labels of every later class: an error instead."""
  write_folder(tmp_path / 'data', ('cat', 'dog'))
  config = train_config()
  config.unlock()
  config.data.dataset = f'inmemory:{tmp_path / "data"}'
  config.data.pp_train = config.data.pp_eval = 'decode|value_range(-1,1)'
  config.batch_size, config.eval_batch_size = 8, 8
  workdir = str(tmp_path / 'wd')
  train.setup(config, workdir, jax.devices()[:1])
  assert json.loads((tmp_path / 'wd' / 'classes.json').read_text()) == [
      'cat', 'dog']
  write_folder(tmp_path / 'data', ('bird',))
  with pytest.raises(ValueError, match="label 0 was 'cat', is now 'bird'"):
    train.setup(config, workdir, jax.devices()[:1])
