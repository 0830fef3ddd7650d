#!/usr/bin/env bash
# Cloud TPU VM (single host or pod slice): create or reuse the slice, copy this
# checkout to every worker, install, and start vit_jax.main --distributed on
# all workers at once (one process per host; jax.distributed auto-detects the
# pod).
#
#   launch/tpu_vm.sh [--dry-run] --name=NAME --zone=ZONE --accelerator=v4-32 \
#       --bucket=gs://BUCKET [--project=P] [--version=tpu-ubuntu2204-base] \
#       [--run=RUN_NAME] -- --config=configs/vit.py:b16,cifar10 [main args]
#
# Settings may also come from the environment: TPU_NAME, TPU_ZONE,
# TPU_ACCELERATOR, TPU_VERSION, GCS_BUCKET, GCP_PROJECT (default: the gcloud
# config's project). The workdir is $BUCKET/vit_jax/$RUN (a bucket, so a
# preempted slice resumes from its last checkpoint when relaunched with the
# same --run). Each worker logs to ~/vit_jax_logs/worker.log; this script
# prints how to follow them. --dry-run prints every gcloud command instead of
# running it (gcloud need not be installed then). Delete the slice with
# launch/tpu_vm_delete.sh.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
die() { echo "tpu_vm.sh: $*" >&2; exit 1; }

dry_run=0
name="${TPU_NAME:-}"; zone="${TPU_ZONE:-}"; accel="${TPU_ACCELERATOR:-}"
version="${TPU_VERSION:-tpu-ubuntu2204-base}"; bucket="${GCS_BUCKET:-}"
project="${GCP_PROJECT:-}"; run="vit_jax-$(date +%Y%m%d-%H%M%S)"
main_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accel="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --bucket=*) bucket="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --run=*) run="${1#*=}" ;;
    -h|--help) usage ;;
    --) shift; main_args=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

have_gcloud=0; command -v gcloud >/dev/null 2>&1 && have_gcloud=1
if [[ $have_gcloud -eq 0 && $dry_run -eq 0 ]]; then
  die "gcloud not found: install the Google Cloud SDK (or use --dry-run)"
fi
if [[ -z "$project" && $have_gcloud -eq 1 ]]; then
  project="$(gcloud config get-value project 2>/dev/null || true)"
fi
[[ -n "$project" ]] || die "no project: pass --project=P, set GCP_PROJECT, or 'gcloud config set project P'"
[[ -n "$name" ]] || die "no TPU name: pass --name=NAME or set TPU_NAME"
[[ -n "$zone" ]] || die "no zone: pass --zone=ZONE or set TPU_ZONE"
[[ -n "$accel" ]] || die "no accelerator type: pass --accelerator=v4-8|v4-32|... or set TPU_ACCELERATOR"
[[ "$bucket" == gs://* ]] || die "no bucket: pass --bucket=gs://BUCKET or set GCS_BUCKET (the workdir must be on GCS for a pod)"
[[ ${#main_args[@]} -gt 0 ]] || die "no vit_jax.main arguments after '--' (at least --config=...)"
for a in "${main_args[@]}"; do
  [[ "$a" != --workdir=* ]] || die "do not pass --workdir: it is ${bucket%/}/vit_jax/RUN (set --run)"
done

workdir="${bucket%/}/vit_jax/${run}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${TMPDIR:-/tmp}/vit_jax_code_${run}.tgz"
where=(--zone="$zone" --project="$project")

echo "TPU VM launch settings:"
echo "  project      $project"
echo "  zone         $zone"
echo "  name         $name"
echo "  accelerator  $accel"
echo "  version      $version"
echo "  workdir      $workdir"
echo "  main args    ${main_args[*]}"
echo "  dry run      $([[ $dry_run -eq 1 ]] && echo yes || echo no)"

quote() {  # shell-quotes one word, readably: as is when it is safe
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
run_cmd() {  # prints the command; runs it unless --dry-run
  printf '+'; for a in "$@"; do printf ' '; quote "$a"; done; printf '\n'
  [[ $dry_run -eq 1 ]] || "$@"
}

quoted_args="$(for a in "${main_args[@]}"; do printf ' '; quote "$a"; done)"
remote_main="cd ~/vit_jax && mkdir -p ~/vit_jax_logs && nohup python3 -m vit_jax.main --distributed${quoted_args} --workdir=${workdir} > ~/vit_jax_logs/worker.log 2>&1 &"

if [[ $dry_run -eq 0 ]] && gcloud compute tpus tpu-vm describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "reusing existing TPU VM $name"
else
  run_cmd gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
    --accelerator-type="$accel" --version="$version"
fi
# The checkout's files as git sees them (tracked + untracked-not-ignored),
# less tracked files deleted in the work tree.
run_cmd bash -c "cd $(quote "$repo") && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do if [ -e \"\$f\" ]; then printf '%s\\0' \"\$f\"; fi; done | tar --null -T - -czf $(quote "$tarball")"
run_cmd gcloud compute tpus tpu-vm scp "$tarball" "$name:~/vit_jax_code.tgz" \
  --worker=all "${where[@]}"
run_cmd gcloud compute tpus tpu-vm ssh "$name" --worker=all "${where[@]}" \
  --command="mkdir -p ~/vit_jax && tar -xzf ~/vit_jax_code.tgz -C ~/vit_jax && cd ~/vit_jax && python3 -m pip install -q . && python3 -m pip install -q -U 'jax[tpu]'"
run_cmd gcloud compute tpus tpu-vm ssh "$name" --worker=all "${where[@]}" \
  --command="$remote_main"

echo "started on all workers of $name; follow worker i with:"
echo "  gcloud compute tpus tpu-vm ssh $name --worker=i --zone=$zone --project=$project --command='tail -f ~/vit_jax_logs/worker.log'"
echo "TensorBoard: tensorboard --logdir=$workdir"
