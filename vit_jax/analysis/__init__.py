"""Looking inside ViTs: attention, embeddings, feature visualization, probes.

One module per analysis; each is a set of pure functions on arrays (numbers
out), drawing lives in `figures`, and `vit_jax.analysis.cli` is the CLI.

  attention      CLS attention maps, attention rollout, mean attention distance
  embeddings     position-embedding similarity, patch-embedding PCA
  feature_vis    activation maximization (Ghiasi et al. 2022), jitted, batched
  spatial        a feature's map over the patch grid per layer; its locality
  cls_insertion  top-1 with the class token inserted late
  frequency      Fourier low-pass filter of images
  masking        background only / foreground only from own-class boxes
  boxes          reading object boxes (PASCAL-VOC / ILSVRC XML, JSON, CSV)
  center_box_patches  patches removed around a centre box (no boxes)
  evaluation     batched top-1 of a model under an image transform
  data           reading the real photos / image folders, eval preprocessing
  modelinfo      loading a model + checkpoint; layer counts, prefix tokens
  validate       argument checks that fail with one line naming the range
  figures        matplotlib PNG drawing
"""
