#!/bin/bash
# Session 29, call 2 (if a machine is lent again): the 4-bit kernels' GPU tests (decode 2, the dot tile), the W4A16 batch-1 step by kernel with call 1's winners (no PDL
# in the profile: each kernel's own time), a second W4A16 A/B round (committed table vs winners), then session 28's
# Xeon plan (CPU only) and issue 17's verify-4 step cost.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
W4_JSON=${1:-/tmp/w4.json}
[ -f "$W4_JSON" ] || W4_JSON=benchmarks/results/h200-2026-12-05-session29/w4.json  # a fresh machine: call 1's copy
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call2_summary.txt
timeout 120 python -m pytest -q -x -p no:cacheprovider -k "decode2 or explicit" tests/kernels/test_w4_gemv_triton.py \
  tests/kernels/test_int_weight_triton.py > $OUT/call2_tests.txt 2>&1; echo "tests rc=$?" | tee -a $S
tail -2 $OUT/call2_tests.txt | tee -a $S
M=/tmp/llama3-8b-shape
[ -d $M ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
PAGODA_PDL=0 timeout 100 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --by-grid \
  --engine-args '{"quantization": "gptq"}' --w4-table $W4_JSON > $OUT/call2_profile_gptq_sweep.txt 2>&1
echo "profile rc=$?" | tee -a $S
grep -E "busy|_w4_gemv|grid" $OUT/call2_profile_gptq_sweep.txt | head -14 | tee -a $S
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
run() {  # name, command...
  local name=$1; shift
  timeout 65 "$@" > $OUT/call2_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call2_lat_$name.txt | tr '\n' ' ')" | tee -a $S
}
# shellcheck disable=SC2086
run gptq_sweep_tile python benchmarks/gpu/with_gemv_table.py --w4-table $W4_JSON --w4-dot-tile -- \
  --log-level WARNING $LAT --quantization gptq
# shellcheck disable=SC2086
run gptq_table python -m pagoda.entrypoints.cli --log-level WARNING $LAT --quantization gptq
timeout 200 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv 2>&1 | tee $OUT/call2_spec_verify.txt \
  | grep -E "^batch [0-9]+:" | tee -a $S
timeout 150 bash benchmarks/results/cpu-2026-12-05-session28/xeon_plan.sh; echo "xeon plan rc=$?" | tee -a $S
