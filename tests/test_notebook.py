"""The Colab notebook runs top to bottom (headless, CPU, tiny settings).

It fine-tunes the released ViT-Ti/16 for a few steps at 64 px on a small
folder of real CIFAR-10 JPEGs (two classes), evaluates, draws attention maps
and saves an `.npz`; any cell error fails the test.
"""

import os
import pathlib
import shutil

import numpy as np
import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / 'vit_jax_finetune.ipynb'


def test_notebook_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None


def test_notebook_runs(tmp_path, shared_data, monkeypatch):
  folder = tmp_path / 'jpegs'
  for split, n in (('train', 24), ('test', 8)):
    for cls in ('cat', 'ship'):
      src = shared_data / 'cifar10' / split / cls
      dst = folder / split / cls
      dst.mkdir(parents=True)
      for f in sorted(os.listdir(src))[:n]:
        shutil.copy(src / f, dst / f)
  workdir = tmp_path / 'work'
  settings = dict(
      VIT_JAX_NB_MODEL='Ti/16',
      VIT_JAX_NB_CHECKPOINT=str(
          shared_data / 'checkpoints/ViT-Ti_16-augreg-i21k-ft-i1k-224.npz'),
      VIT_JAX_NB_DATASET=f'folder:{folder}', VIT_JAX_NB_TRAIN_SPLIT='train',
      VIT_JAX_NB_EVAL_SPLIT='test', VIT_JAX_NB_RESOLUTION='64',
      VIT_JAX_NB_STEPS='4', VIT_JAX_NB_BATCH='16', VIT_JAX_NB_LR='0.01',
      VIT_JAX_NB_WORKDIR=str(workdir),
      XLA_FLAGS='--xla_force_host_platform_device_count=1')
  for k, v in settings.items():
    monkeypatch.setenv(k, v)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': str(REPO)}})
  client.execute()  # raises CellExecutionError on any failing cell
  saved = np.load(workdir / 'finetuned.npz')
  assert saved['head/kernel'].shape == (192, 2)
  assert saved['Transformer/posembed_input/pos_embedding'].shape == (1, 17,
                                                                     192)
  text = '\n'.join(o.get('text', '') for c in nb.cells
                   for o in c.get('outputs', []))
  assert 'top-1' in text
  images = [o for c in nb.cells for o in c.get('outputs', [])
            if 'image/png' in o.get('data', {})]
  assert images, 'the attention-map cell drew nothing'
