"""Native CPU kernels called from XLA (FFI custom calls)."""
