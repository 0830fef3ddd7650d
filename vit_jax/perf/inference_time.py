"""The `inference_time` trainer: throughput of a model, written to workdir.

    python -m vit_jax.main --config=configs/inference_time.py:B/16 \
        --workdir=/tmp/it

`run(config, workdir)` times every mode of `config.modes` ('infer', 'train')
with `vit_jax.perf.bench.run` (img/s, analytic FLOPs, TFLOP/s, MFU, peak memory,
compile time), prints one summary line per mode and writes the raw results
to `workdir/inference_time.json` (a list of `bench.Result` dicts).
"""

import dataclasses
import json
import os

from vit_jax.perf import bench


def run(config, workdir: str) -> list[bench.Result]:
  """Benchmarks `config.model_name`; see the module docstring."""
  modes = [m.strip() for m in config.modes.split(',') if m.strip()]
  for m in modes:
    if m not in bench.MODES:
      raise ValueError(f'config.modes: unknown mode {m!r}; allowed: '
                       f'{", ".join(bench.MODES)}')
  results = []
  for mode in modes:
    r = bench.run(
        config.model_name, resolution=config.image_size,
        batch=config.batch_size, dtype=config.dtype, mode=mode,
        steps=config.steps, warmup=config.warmup, remat=config.remat,
        num_classes=config.num_classes, peak_tflops=config.peak_tflops,
        perf=config.perf.to_dict())
    print(r.summary(), flush=True)
    results.append(r)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'inference_time.json')
  with open(path, 'w') as f:
    json.dump([dataclasses.asdict(r) for r in results], f, indent=1)
  print(f'wrote {path}')
  return results
