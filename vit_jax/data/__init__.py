"""Data: every input a training or evaluation run reads, and preprocessing.

  input_pipeline  tf.data inputs (tfds, image folders, digits) with pp strings
  inmemory        small folders decoded once into RAM (fast CPU runs)
  synthetic       random images with the input contract (benchmarks, tests)
  image_folder    the `{split}/<class>/*.jpg` layout and its class map
  images          eval image decoding and preprocessing (predict, analyses)
  tf_decode       JPEG / PNG decoding inside tf.data, matching `images`
  dataset_info    class counts, names and split sizes of known datasets
  device_data     host batches -> global sharded arrays, with prefetch
  pp              the pp-string preprocessing ops
"""
