#!/usr/bin/env bash
# A/B of the SDPA prompt path (PAGODA_PREFILL_SDPA) and async scheduling: batch-1 prefill of
# 1,024 tokens and the ShareGPT-like throughput, in one call.
# Usage: bash benchmarks/gpu/ab_sdpa_async.sh [throughput]   (throughput: the throughput rounds only)
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
[ "${1:-}" = throughput ] || for cfg in "1 --async-scheduling" "0 --async-scheduling" "1 --no-async-scheduling" "0 --no-async-scheduling"; do
  set -- $cfg
  echo "== SDPA=$1 $2 b1 prefill 1024"
  PAGODA_PREFILL_SDPA=$1 python -m pagoda.entrypoints.cli bench latency --model $M --load-format dummy $2 --batch-size 1 --input-len 1024 --output-len 8 --num-iters 5 --max-model-len 4096 2>&1 | grep -E "^batch|rror"
done
for i in 1 2; do for s in 1 0; do
  echo "== throughput SDPA=$s round $i"
  PAGODA_PREFILL_SDPA=$s python -m pagoda.entrypoints.cli bench throughput --model $M --load-format dummy --dataset sharegpt --num-prompts 500 --max-model-len 4096 --output-json ${OUT:-/tmp}/tp_sdpa${s}_r$i.json 2>&1 | grep -E "pagoda\]|rror"
done; done
