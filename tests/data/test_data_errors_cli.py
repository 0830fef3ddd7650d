"""`python -m vit_jax.main` on an image folder holding a non-image named
.jpg: exit 1 with one `error:` line naming the file, no traceback."""

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import COMPILE_FLAGS
from tests.conftest import REPO


def test_training_on_a_folder_with_a_bad_file(tmp_path):
  for split, n in (('train', 4), ('test', 1)):
    for c in ('cat', 'dog'):
      (tmp_path / split / c).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(
            tmp_path / split / c / f'{i}.png')
  (tmp_path / 'train' / 'dog' / 'page.jpg').write_text('<html></html>')
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'TF_CPP_MIN_LOG_LEVEL')}
  env.update(JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1',
             XLA_FLAGS=COMPILE_FLAGS)
  proc = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main',
       '--config=configs/vit.py:mu16,cifar10_folder,res=32',
       f'--config.data.dataset=folder:{tmp_path}', '--config.batch_size=4',
       '--config.eval_batch_size=4', '--config.total_steps=2',
       '--config.warmup_steps=1', f'--workdir={tmp_path / "wd"}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert errors == [f'error: cannot read image {tmp_path}/train/dog/'
                    'page.jpg: not an image file (no format PIL reads)'], (
                        proc.stderr[-2000:])
  assert 'Traceback' not in proc.stderr
