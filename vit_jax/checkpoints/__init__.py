"""Checkpoints: the official `.npz` files and the Orbax train state.

  npz          read / write the official `.npz` layout (`inspect` CLI: `python -m vit_jax.checkpoints`)
  npz_naming   the released (pre-Linen) and Linen namings of encoder blocks
  pretrained   the one path from a pretrained file or workdir into a model
  train_state  Orbax train state of a workdir: save, verify, restore
  manifest     sha256 manifests that mark a saved step complete
"""
