#!/usr/bin/env bash
# Deletes a Cloud TPU VM slice made by launch/tpu_vm.sh (checkpoints stay in
# the bucket).
#
#   launch/tpu_vm_delete.sh [--dry-run] --name=NAME --zone=ZONE [--project=P]
#
# Env: TPU_NAME, TPU_ZONE, GCP_PROJECT (default: the gcloud config's project).
set -euo pipefail

die() { echo "tpu_vm_delete.sh: $*" >&2; exit 1; }
dry_run=0; name="${TPU_NAME:-}"; zone="${TPU_ZONE:-}"
project="${GCP_PROJECT:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
have_gcloud=0; command -v gcloud >/dev/null 2>&1 && have_gcloud=1
[[ $have_gcloud -eq 1 || $dry_run -eq 1 ]] || die "gcloud not found: install the Google Cloud SDK (or use --dry-run)"
if [[ -z "$project" && $have_gcloud -eq 1 ]]; then
  project="$(gcloud config get-value project 2>/dev/null || true)"
fi
[[ -n "$project" ]] || die "no project: pass --project=P, set GCP_PROJECT, or 'gcloud config set project P'"
[[ -n "$name" ]] || die "no TPU name: pass --name=NAME or set TPU_NAME"
[[ -n "$zone" ]] || die "no zone: pass --zone=ZONE or set TPU_ZONE"
echo "deleting TPU VM: project $project, zone $zone, name $name"
cmd=(gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --project="$project" --quiet)
printf '+ %s\n' "${cmd[*]}"
[[ $dry_run -eq 1 ]] || "${cmd[@]}"
