#!/usr/bin/env bash
# One SLURM task of a vit_jax job: the SLURM environment -> jax.distributed.
#
#   JAX_COORDINATOR_ADDRESS = first host of SLURM_JOB_NODELIST : PORT (12355)
#   JAX_NUM_PROCESSES       = SLURM_NTASKS
#   JAX_PROCESS_ID          = SLURM_PROCID
# With several tasks per node each task sees one GPU (SLURM_LOCALID).
# Then runs python -m vit_jax.main "$@" (which calls jax.distributed.initialize).
set -euo pipefail
: "${SLURM_NTASKS:?not inside a SLURM job (SLURM_NTASKS unset)}"
: "${SLURM_PROCID:?not inside a SLURM job (SLURM_PROCID unset)}"
: "${SLURM_JOB_NODELIST:?not inside a SLURM job (SLURM_JOB_NODELIST unset)}"
if command -v scontrol >/dev/null 2>&1; then
  hosts="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
  head_node="${hosts%%$'\n'*}"
else
  head_node="${SLURM_JOB_NODELIST%%,*}"
fi
export JAX_COORDINATOR_ADDRESS="${head_node}:${PORT:-12355}"
export JAX_NUM_PROCESSES="$SLURM_NTASKS"
export JAX_PROCESS_ID="$SLURM_PROCID"
if [[ "${SLURM_NTASKS_PER_NODE:-1}" != 1 && -n "${SLURM_LOCALID:-}" ]]; then
  export CUDA_VISIBLE_DEVICES="$SLURM_LOCALID"
fi
exec "${PYTHON:-python3}" -m vit_jax.main "$@"
