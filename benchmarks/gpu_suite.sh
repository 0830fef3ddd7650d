#!/bin/bash
# The GPU measurements of docs/performance.md, in one call (about 9 minutes).
#   OUT=/tmp/gpu_logs bash benchmarks/gpu_suite.sh [part]
# part (comma-separated): peak | check | profile | flags | b16 | timm |
#   timm_eager | scaling | all (default); logs: $OUT/*.log.
# BENCH_ARGS: extra flags for the profile and flags parts.
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
PY=${PY:-python3}
part=${1:-all}  # comma-separated list of parts
want() { [[ $part == all || ,$part, == *,$1,* ]]; }
run() {  # run NAME SECONDS CMD...: one step, logged, bounded in time
  local name=$1 secs=$2; shift 2
  echo "=== $name: ${XLA_FLAGS:+XLA_FLAGS=\"$XLA_FLAGS\" }$*" | tee -a "$OUT/$name.log"
  timeout "$secs" "$@" 2>&1 | grep -v -e '^WARNING' -e 'W0000' \
    | tee -a "$OUT/$name.log"
}
if want peak; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit \
    --format=csv | tee "$OUT/env.log"
  $PY -c 'import jax, flax, torch, timm; print(jax.__version__, flax.__version__, torch.__version__, timm.__version__, jax.devices())' | tee -a "$OUT/env.log"
  run peak 60 $PY benchmarks/matmul_peak.py --n=8192 --dtype=bfloat16 --steps=10
fi
B16_TRAIN=(--model=B/16 --resolution=224 --dtype=bfloat16 --mode=train
           --attention_impl=cudnn ${BENCH_ARGS:-})
if want profile; then  # per-kernel times of one B/16 training step
  run profile 200 $PY benchmarks/profile_step.py "${B16_TRAIN[@]}" \
    --batch=256 --top=60 --trace_dir=/tmp/vit_jax_profile
  t=$(ls -t /tmp/vit_jax_profile/*/ -d | head -1)
  cp "$(find "$t" -name '*.trace.json.gz' | head -1)" "$OUT/b16_trace.json.gz"
  gzip -c "$t/optimized_hlo.txt" > "$OUT/b16_hlo.txt.gz"
fi
if want flags; then  # the B/16 training step under XLA:GPU flag variants
  # 'default' runs under the caller's XLA_FLAGS; XLA aborts on a blank XLA_FLAGS.
  for flags in default --xla_gpu_enable_triton_gemm=false \
      --xla_gpu_enable_cublaslt=true \
      --xla_gpu_enable_latency_hiding_scheduler=true; do
    [[ $flags == default ]] && flags=
    all_flags=$(echo "${XLA_FLAGS:-} $flags" | xargs)
    if [[ -n $all_flags ]]; then
      XLA_FLAGS=$all_flags run flags 120 $PY -m vit_jax.perf.bench \
        "${B16_TRAIN[@]}" --batch=256 --steps=10 --warmup=3
    else
      (unset XLA_FLAGS; run flags 120 $PY -m vit_jax.perf.bench \
        "${B16_TRAIN[@]}" --batch=256 --steps=10 --warmup=3)
    fi
  done
  run flags 150 $PY -m vit_jax.perf.bench "${B16_TRAIN[@]}" --batch=512 \
    --steps=6 --warmup=2
fi
if want check; then
  run check 200 $PY benchmarks/attention_check.py --batch=64 ||
    run check 200 $PY benchmarks/attention_check.py --batch=64 \
      --cudnn_seq_multiple=64
fi
if want b16; then
  for attn in xla cudnn; do
    run b16 100 $PY benchmarks/scaling.py --models=B/16 --resolutions=224 \
      --dtype=bfloat16 --batch=128 --steps=10 --warmup=2 --attention_impl=$attn
  done
  run b16 100 $PY benchmarks/scaling.py --models=B/16 --resolutions=224 \
    --dtype=bfloat16 --batch=256 --steps=10 --warmup=2 --attention_impl=cudnn
fi
if want timm; then
  run timm 200 $PY benchmarks/timm_side_by_side.py --cases=b16 \
    --modes=train,infer --dtype=bfloat16 --batch=128 --rounds=10 --warmup=3 \
    --attention_impl=cudnn --torch_compile
fi
if want timm_eager; then
  run timm 120 $PY benchmarks/timm_side_by_side.py --cases=b16 \
    --modes=train --dtype=bfloat16 --batch=128 --rounds=10 --warmup=2 \
    --attention_impl=cudnn
fi
if want scaling; then
  run scaling 260 $PY benchmarks/scaling.py --models=Ti/16,S/16,B/16,L/16 \
    --resolutions=224,384 --dtype=bfloat16 --batch=64 --steps=5 \
    --attention_impl=cudnn
fi
