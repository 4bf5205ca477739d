#!/bin/bash
# Session 29, call 2: issue 12's batch-1 / batch-64 decode steps (Llama-3-8B shape, dummy weights): bf16, W4A16 (GPTQ
# layout) with the committed SMALL_M_TABLE, and W4A16 with call 1's sweep winners (W4_JSON, decode 2 candidates
# included), then where the W4A16 batch-1 step goes by kernel with those winners (no PDL: each kernel's own time).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
W4_JSON=${1:-/tmp/w4.json}
[ -f "$W4_JSON" ] || W4_JSON=benchmarks/results/h200-2026-12-05-session29/w4.json  # a fresh machine: the copy from call 1
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
[ -d $M ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
run() {  # name, command...
  local name=$1; shift
  timeout 150 "$@" > $OUT/call2_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call2_lat_$name.txt | tr '\n' ' ')" | tee -a $OUT/call2_summary.txt
}
CLI="python -m pagoda.entrypoints.cli --log-level WARNING"
# shellcheck disable=SC2086
run bf16 $CLI $LAT
# shellcheck disable=SC2086
run gptq_table $CLI $LAT --quantization gptq
# shellcheck disable=SC2086
run gptq_sweep python benchmarks/gpu/with_gemv_table.py --w4-table $W4_JSON -- --log-level WARNING $LAT \
  --quantization gptq
# shellcheck disable=SC2086
run gptq_table_2 $CLI $LAT --quantization gptq
PAGODA_PDL=0 timeout 120 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --by-grid \
  --engine-args '{"quantization": "gptq"}' --w4-table $W4_JSON > $OUT/call2_profile_gptq_sweep.txt 2>&1
echo "profile rc=$?" | tee -a $OUT/call2_summary.txt
grep -E "busy|_w4_gemv|gemv_kernel" $OUT/call2_profile_gptq_sweep.txt | head -12 | tee -a $OUT/call2_summary.txt
