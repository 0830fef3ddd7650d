"""Training: the loop, the step, optimizer, sharding, metrics, workdir safety.

  train           setup (mesh, data, model, optimizer, restore) and the loop
  optim           optax optimizers and learning-rate schedules
  sharding        mesh axes and partition rules as data
  metrics         progress lines and TensorBoard
  event_file      TensorBoard event files written and read without TensorFlow
  config_record   the workdir's record of the config, checked on resume
  workdir_lock    one run per workdir
  process_agree   values decided by process 0 and shared with all processes
"""
