#!/bin/bash
# The real-data runs behind docs/analysis.md (CPU; about 2 hours on 2 shared
# cores). Outputs go to $OUT (default /tmp/an); the small copies of the
# figures shown in the docs go to docs/figures/.
#   bash benchmarks/analysis_real_data.sh [imagenet|featvis|cifar|figures]...
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
DATA=${VIT_JAX_SHARED_DATA:-$PWD/../shared/data}
CK=$DATA/checkpoints/ViT-Ti_16-augreg-i21k-ft-i1k-224.npz
S=$DATA/imagenet_samples
OUT=${OUT:-/tmp/an}
A="python -m vit_jax.analysis"

imagenet() {
  local O=$OUT/imagenet
  $A attention --out $OUT/attn --checkpoint $CK --images \
    $S/n02099601_golden_retriever.JPEG $S/n01440764_tench.JPEG \
    $S/n02123045_tabby.JPEG $S/n04037443_racer.JPEG \
    $S/n01531178_goldfinch.JPEG
  $A embeddings --out $OUT/emb --checkpoint $CK
  $A spatial --out $OUT/spatial --checkpoint $CK --kind block --index 5 \
    --images $S/n02099601_golden_retriever.JPEG $S/n04037443_racer.JPEG
  $A lowpass --out $O --checkpoint $CK --fractions 1,0.3,0.1,0.05,0.02
  $A masking --out $OUT/boxes --checkpoint $CK --boxes tests/fixtures/boxes
  for R in background foreground; do
    $A masking --protocol center_box_patches --out $O --checkpoint $CK \
      --remove $R --fractions 0.25,0.5,0.75,1
  done
  $A compare --out $O --name masking_compare \
    --title 'ViT-Ti/16, 1000 ImageNet photos, centre box' \
    $O/masking_center_box_patches_{background,foreground}_removed.json
  $A cls --out $O --checkpoint $CK --layers 0,11
  $A cls --out $O/cls_curve --checkpoint $CK --layers 1,2,4,6,8,10 --limit 200
}

featvis() {
  $A featvis --out $OUT/featvis --checkpoint $CK --steps 100 --copies 4 \
    --ncols 3 --features \
    mlp:1:0,mlp:1:17,mlp:1:42,mlp:6:0,mlp:6:17,mlp:6:42,mlp:10:0,mlp:10:17,mlp:10:42
}

# A small ViT (vit_c4: width 128, 4 blocks, 4x4 patches) and the ResNetV2
# BiT-R8, trained with the same recipe and budget as
# configs/cpu.py:cifar10_scratch32 (AdamW 2e-3, wd 0.05, 250 steps of 128,
# 32 px); then the same low-pass and masking curves for both.
cifar() {
  for M in vit_c4 bit_r8; do
    python -m vit_jax.main \
      --config=configs/vit.py:$M,cifar10_mem,res=32,steps=250,batch=128,lr=2e-3 \
      --config.optim.name=adamw --config.optim.weight_decay=0.05 \
      --config.warmup_steps=25 --config.eval_batch_size=250 \
      --config.log_every=50 --config.eval_every=0 \
      --config.checkpoint_every=100 --workdir=$OUT/cifar_$M
    $A lowpass --out $OUT/cifar_lp_$M --checkpoint $OUT/cifar_$M \
      --resolution 32 --data cifar10:test --limit 2000 --batch_size 500 \
      --label $M \
      --fractions 1,0.5,0.3,0.2,0.1
    $A masking --protocol center_box_patches --out $OUT/cifar_mask_$M \
      --checkpoint $OUT/cifar_$M \
      --resolution 32 --data cifar10:test --limit 2000 --batch_size 500 \
      --label $M \
      --patch_px 4 --fractions 0,0.25,0.5,0.75,1
  done
  $A compare --out $OUT/cifar_compare --name lowpass --relative \
    --title 'CIFAR-10 test: ViT vs ResNet, low-pass' \
    $OUT/cifar_lp_{vit_c4,bit_r8}/lowpass.json
  $A compare --out $OUT/cifar_compare --name masking_background --relative \
    --title 'CIFAR-10 test: ViT vs ResNet, background masked' \
    $OUT/cifar_mask_{vit_c4,bit_r8}/masking_center_box_patches_background_removed.json
}

# Small palette PNG copies (<= 200 KB) for the docs.
figures() {
  python - "$OUT" <<'PY'
import os, sys
from PIL import Image
out = sys.argv[1]
pick = {
    'attention_golden_retriever.png':
        'attn/attention_n02099601_golden_retriever.png',
    'rollout.png': 'attn/rollout.png',
    'mean_distance.png': 'attn/mean_distance.png',
    'posemb_similarity.png': 'emb/posemb_similarity.png',
    'patch_pca.png': 'emb/patch_pca.png',
    'featvis.png': 'featvis/featvis.png',
    'spatial.png': 'spatial/spatial_n02099601_golden_retriever.png',
    'locality.png': 'spatial/locality.png',
    'imagenet_lowpass.png': 'imagenet/lowpass.png',
    'imagenet_masking.png': 'imagenet/masking_compare.png',
    'imagenet_boxes_examples.png': 'boxes/masking_examples.png',
    'imagenet_boxes_top1.png': 'boxes/masking_top1.png',
    'cifar_lowpass.png': 'cifar_compare/lowpass.png',
    'cifar_masking.png': 'cifar_compare/masking_background.png',
}
os.makedirs('docs/figures', exist_ok=True)
for dst, src in pick.items():
  src = os.path.join(out, src)
  if not os.path.exists(src):
    print('missing', src)
    continue
  # at its saved size (fonts >= 8 pt at 100 dpi), 256 colours
  im = Image.open(src).convert('RGB').quantize(256)
  path = os.path.join('docs/figures', dst)
  im.save(path, optimize=True)
  print(path, os.path.getsize(path) // 1024, 'KB')
PY
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(imagenet featvis cifar figures)
for step in "${steps[@]}"; do
  $step
done
