#!/usr/bin/env bash
# Submits launch/slurm.sbatch: vit_jax.main on N GPU nodes of a SLURM cluster,
# one process per node (default) or per GPU (--per-gpu).
#
#   launch/slurm.sh [--dry-run] --nodes=N [--gpus-per-node=8] [--per-gpu] \
#       [--partition=P] [--account=A] [--time=HH:MM:SS] \
#       -- --config=configs/vit.py:b16,cifar10 --workdir=DIR [main args]
#
# Env instead of flags: SLURM_NODES, SLURM_GPUS_PER_NODE_WANTED, SLURM_PARTITION,
# SLURM_ACCOUNT, SLURM_TIME. DIR must be visible from every node (shared file
# system or gs://); relaunching with the same DIR resumes from its last
# checkpoint. Per-task logs: ./logs/vit_jax-JOBID-TASK.log. --dry-run prints
# the sbatch command (sbatch need not be installed then).
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 1; }
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

dry_run=0; per_gpu=0
nodes="${SLURM_NODES:-}"; gpus="${SLURM_GPUS_PER_NODE_WANTED:-8}"
partition="${SLURM_PARTITION:-}"; account="${SLURM_ACCOUNT:-}"
time_limit="${SLURM_TIME:-}"; main_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --per-gpu) per_gpu=1 ;;
    --nodes=*) nodes="${1#*=}" ;;
    --gpus-per-node=*) gpus="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    -h|--help) usage ;;
    --) shift; main_args=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

[[ -n "$nodes" ]] || die "no node count: pass --nodes=N or set SLURM_NODES"
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes='$nodes' is not a positive integer"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node='$gpus' is not a positive integer"
[[ ${#main_args[@]} -gt 0 ]] || die "no vit_jax.main arguments after '--' (--config=... --workdir=...)"
has_config=0; has_workdir=0
for a in "${main_args[@]}"; do
  [[ "$a" == --config=* ]] && has_config=1
  [[ "$a" == --workdir=* ]] && has_workdir=1
done
[[ $has_config -eq 1 ]] || die "no --config=... among the vit_jax.main arguments"
[[ $has_workdir -eq 1 ]] || die "no --workdir=... among the vit_jax.main arguments (a path every node sees, or gs://)"
if [[ $dry_run -eq 0 ]]; then
  command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run this on a SLURM login node (or use --dry-run)"
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
procs=$((nodes * (per_gpu ? gpus : 1)))
echo "SLURM submit settings:"
echo "  nodes          $nodes"
echo "  gpus per node  $gpus"
echo "  processes      $procs ($([[ $per_gpu -eq 1 ]] && echo 'one per GPU' || echo 'one per node'))"
echo "  partition      ${partition:-(cluster default)}"
echo "  account        ${account:-(cluster default)}"
echo "  time limit     ${time_limit:-(cluster default)}"
echo "  repository     $repo"
echo "  main args      ${main_args[*]}"
echo "  dry run        $([[ $dry_run -eq 1 ]] && echo yes || echo no)"

quote() {  # shell-quotes one word, readably: as is when it is safe
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
cmd=(sbatch --nodes="$nodes" --gpus-per-node="$gpus"
     --ntasks-per-node="$((per_gpu ? gpus : 1))" --chdir="$repo"
     --output="$repo/logs/vit_jax-%j.out")
[[ -n "$partition" ]] && cmd+=(--partition="$partition")
[[ -n "$account" ]] && cmd+=(--account="$account")
[[ -n "$time_limit" ]] && cmd+=(--time="$time_limit")
cmd+=("$repo/launch/slurm.sbatch")
[[ $per_gpu -eq 1 ]] && cmd+=(--per-gpu)
cmd+=(-- "${main_args[@]}")
printf '+'; for a in "${cmd[@]}"; do printf ' '; quote "$a"; done; printf '\n'
[[ $dry_run -eq 1 ]] && exit 0
mkdir -p "$repo/logs"
"${cmd[@]}"
