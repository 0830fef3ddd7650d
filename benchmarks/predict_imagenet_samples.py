"""Top-1 / top-5 of `python -m vit_jax.predict` on the 1,000 ImageNet photos.

    python benchmarks/predict_imagenet_samples.py            # 224 and 384
    python benchmarks/predict_imagenet_samples.py --resolutions=224 --limit=50

Runs the CLI as a user would (`--json`, the released ViT-Ti/16 of the shared
data) on `imagenet_samples/` (one photo per ImageNet-1k class; the class of
`<wnid>_<name>.JPEG` is the position of its wnid in
`imagenet_labels/imagenet_synsets.txt`) and prints, per resolution, the
share of photos whose class is the first of the top 5 (top-1) or among them
(top-5), in percent. 224 uses the default eval preprocessing (resize the
shorter side to 248, center crop 224); 384 uses `--crop_pct=1` and the
position embeddings resampled from 14x14 to 24x24. Measured on a 2-core CPU:
82.7 % / 96.5 % at 224, 80.4 % top-1 at 384 (README's table).

`--limit=N` takes the first N photos (a smoke run). The real data folder is
`--data`, default $VIT_JAX_SHARED_DATA or `../shared/data` next to the
repository. Minutes on a CPU (384 is ~4x the work of 224).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CKPT = 'checkpoints/ViT-Ti_16-augreg-i21k-ft-i1k-224.npz'
LABELS = 'imagenet_labels/imagenet1k_index_wnid_lemma.tsv'


def top1_top5(rows, synsets) -> tuple[float, float]:
  """rows: predict's JSON lines; synsets: wnids in class-index order."""
  index = {w: i for i, w in enumerate(synsets)}
  top1 = top5 = 0
  for r in rows:
    truth = index[os.path.basename(r['image']).split('_')[0]]
    ranked = [c[0] for c in r['top5']]
    top1 += ranked[0] == truth
    top5 += truth in ranked
  return 100 * top1 / len(rows), 100 * top5 / len(rows)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', default=os.environ.get(
      'VIT_JAX_SHARED_DATA', str(REPO.parent / 'shared' / 'data')))
  p.add_argument('--resolutions', default='224,384')
  p.add_argument('--limit', type=int, default=0, help='first N photos; 0: all')
  args = p.parse_args()
  data = pathlib.Path(args.data)
  photos = sorted(str(f) for f in (data / 'imagenet_samples').iterdir())
  if args.limit:
    photos = photos[:args.limit]
  synsets = (data / 'imagenet_labels/imagenet_synsets.txt').read_text().split()
  for res in (int(r) for r in args.resolutions.split(',')):
    extra = [] if res == 224 else ['--crop_pct=1']
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, '-m', 'vit_jax.predict', '--json', '--model=Ti/16',
         f'--resolution={res}', *extra, f'--checkpoint={data / CKPT}',
         f'--labels={data / LABELS}', *photos],
        cwd=REPO, capture_output=True, text=True)
    if r.returncode:
      print(f'error: predict at {res} exited {r.returncode}: '
            f'{r.stderr.strip().splitlines()[-1:]}', file=sys.stderr)
      return 1
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    top1, top5 = top1_top5(rows, synsets)
    print(f'ViT-Ti/16 @{res} on {len(rows)} photos: top-1 {top1:.1f} %, '
          f'top-5 {top5:.1f} % ({time.time() - t0:.0f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
