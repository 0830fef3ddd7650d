#!/usr/bin/env bash
# Runs N local processes of vit_jax.main as one multi-process JAX job.
#
#   launch/local.sh N_PROCESSES DEVICES_PER_PROCESS -- <vit_jax.main args>
#
# Process i runs `python -m vit_jax.main --distributed
# --coordinator_address=localhost:PORT --num_processes=N --process_id=i ARGS`
# (main calls jax.distributed.initialize with them and selects gloo CPU
# collectives) with JAX_PLATFORMS=cpu and
# XLA_FLAGS=--xla_force_host_platform_device_count=DEVICES_PER_PROCESS.
# Output of process i goes to stdout prefixed with "[i]"; the script exits
# with the first non-zero status. Env: PORT (default a free one), PYTHON.
set -euo pipefail

if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 N_PROCESSES DEVICES_PER_PROCESS -- <vit_jax.main args>" >&2
  exit 2
fi
n="$1"; d="$2"; shift 3
for v in "$n" "$d"; do
  if [[ ! "$v" =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: N_PROCESSES and DEVICES_PER_PROCESS must be positive integers, got '$v'" >&2
    exit 2
  fi
done
python="${PYTHON:-python}"
free_port='import socket; s = socket.socket(); s.bind(("", 0))
print(s.getsockname()[1])'
port="${PORT:-$("$python" -c "$free_port")}"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup INT TERM

for ((i = 0; i < n; i++)); do
  (
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="--xla_force_host_platform_device_count=${d}"
    exec "$python" -m vit_jax.main --distributed \
      --coordinator_address="localhost:${port}" --num_processes="$n" \
      --process_id="$i" "$@" 2>&1 | sed -u "s/^/[$i] /"
  ) &
  pids+=("$!")
done

status=0
for p in "${pids[@]}"; do
  if ! wait "$p"; then
    [[ $status -eq 0 ]] && { status=1; cleanup; }
  fi
done
exit "$status"
