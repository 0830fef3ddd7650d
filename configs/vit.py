"""Fine-tuning a ViT (or hybrid / ResNet) on a classification dataset.

    python -m vit_jax.main --config=configs/vit.py:b16,cifar10 --workdir=DIR
    python -m vit_jax.main --config=configs/vit.py:ti16,cifar10_folder,res=128 \
        --config.pretrained_path=PATH.npz --workdir=DIR

The argument after ':' is 'MODEL,DATASET[,res=..,steps=..,batch=..,lr=..]'
with MODEL and DATASET from the presets in `configs/common.py`. Defaults are
the official fine-tuning recipe: SGD momentum 0.9 (bfloat16 accumulator),
base lr 0.03, cosine decay, warmup, grad-norm clip 1, batch 512, 384 px.
"""

from configs import common

# The argument after ':' (`python -m vit_jax.main --help` lists it).
ARGUMENT = 'MODEL,DATASET[,res=N,steps=N,batch=N,lr=X]'


def get_config(arg=None):
  config = common.with_presets(arg)
  return config.lock()
