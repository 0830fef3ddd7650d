"""Runs the Colab notebook `vit_jax_finetune.ipynb` headless (nbclient) on a
tiny configuration: the released ViT-Ti/16 from the shared data, fine-tuned
a few steps at 32 px on a small folder of real CIFAR-10 JPEGs (the "your own
JPEGs" path), on one CPU device. Any cell error fails the test."""

import os
import pathlib
import shutil

import nbformat
import numpy as np
import pytest

from tests import conftest
from vit_jax.checkpoints import npz

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / 'vit_jax_finetune.ipynb'
CLASSES = ('airplane', 'cat', 'ship')


def test_notebook_is_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(c.outputs == [] and c.execution_count is None for c in code)
  tagged = [c for c in code if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1 and 'CHECKPOINT =' in tagged[0].source
  assert 'colab.research.google.com' in nb.cells[0].source


def _jpeg_folder(shared_data: pathlib.Path, root: pathlib.Path) -> None:
  """root/{train,test}/<class>/*.jpg: 8 train and 4 test images per class."""
  for split, n in (('train', 8), ('test', 4)):
    for c in CLASSES:
      src = shared_data / 'cifar10' / split / c
      (root / split / c).mkdir(parents=True)
      for f in sorted(src.iterdir())[:n]:
        shutil.copy(f, root / split / c / f.name)


def test_notebook_runs_headless(shared_data, tmp_path):
  import nbclient  # pylint: disable=g-import-not-at-top
  ckpt = shared_data / 'checkpoints' / 'ViT-Ti_16-augreg-i21k-ft-i1k-224.npz'
  _jpeg_folder(shared_data, tmp_path / 'images')
  workdir = tmp_path / 'workdir'
  env = {k: v for k, v in os.environ.items() if not k.startswith('XLA_')}
  env.update(JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1',
             XLA_FLAGS=conftest.COMPILE_FLAGS,
             VIT_JAX_NB_CHECKPOINT=str(ckpt),
             VIT_JAX_NB_MODEL='Ti/16',
             VIT_JAX_NB_DATASET=f'folder:{tmp_path / "images"}',
             VIT_JAX_NB_TRAIN_SPLIT='train', VIT_JAX_NB_EVAL_SPLIT='test',
             VIT_JAX_NB_IMAGE_SIZE='32', VIT_JAX_NB_BATCH_SIZE='8',
             VIT_JAX_NB_STEPS='4', VIT_JAX_NB_WARMUP_STEPS='1',
             VIT_JAX_NB_LEARNING_RATE='0.01', VIT_JAX_NB_WORKDIR=str(workdir),
             VIT_JAX_NB_NUM_EXAMPLES='3')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': str(REPO)}})
  client.execute(env=env)  # raises CellExecutionError on any cell error

  text = '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.outputs)
  assert "DATASET = 'folder:" in text  # the override reached the notebook
  assert 'initializing from ' + str(ckpt) in text
  assert 'test: top-1 ' in text and 'after 4 steps' in text
  images = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if 'image/png' in o.get('data', {})]
  assert images, 'no figure was shown'
  assert (workdir / 'attention.png').stat().st_size > 1000
  assert (workdir / 'checkpoints' / '4').is_dir()
  saved = npz.load_npz(str(workdir / 'finetuned.npz'))
  assert saved['head']['kernel'].shape == (192, len(CLASSES))
  released = npz.load_npz(str(ckpt))
  # Fine-tuned from the release: a block kernel moved, but only a little.
  a = saved['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel']
  b = released['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0'][
      'kernel']
  assert not np.array_equal(a, b)
  assert np.abs(a - b).max() < 0.1 * np.abs(b).max()
  assert pytest.approx(np.abs(b).mean(), rel=0.1) == np.abs(a).mean()
