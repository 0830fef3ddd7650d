"""Performance tools: benchmarks, FLOP counts and backend-specific speed.

  bench           throughput / MFU of a model's compiled step
  inference_time  the `configs/inference_time.py` job
  flops           parameter counts and analytic FLOPs (2 x multiply-adds)
  cpu_gemm        OpenBLAS matmuls and convolutions as XLA FFI kernels (CPU)
  host_malloc     glibc allocator settings for XLA:CPU steps
  microbatch      a step's batch as independent micro-batches (CPU)
"""
