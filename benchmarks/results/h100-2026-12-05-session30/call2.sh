#!/bin/bash
# Session 30, call 2 (if the budget allows after call 1): the 4-bit kernels' GPU tests (GEMV decode 2, every dot decode,
# explicit configs), a second latency round on the same machine (bf16, W4A16 with call 1's winners, W4A16 with the
# committed tables), the W4A16 batch-1 step by kernel with the winners (no PDL in the profile: each kernel's own time).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
W4_JSON=${1:-/tmp/w4.json}
[ -f "$W4_JSON" ] || W4_JSON=benchmarks/results/h200-2026-12-05-session30/w4.json  # a fresh machine: call 1's copy
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call2_summary.txt
timeout 150 python -m pytest -q -p no:cacheprovider -k "decode2 or explicit or dot or bf16" \
  tests/kernels/test_w4_gemv_triton.py tests/kernels/test_int_weight_triton.py tests/gpu/test_gpu_int4_kernels.py \
  > $OUT/call2_tests.txt 2>&1; echo "tests rc=$?" | tee -a $S
tail -3 $OUT/call2_tests.txt | tee -a $S
M=/tmp/llama3-8b-shape
[ -d $M ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
run() {  # name, command...
  local name=$1; shift
  timeout 75 "$@" > $OUT/call2_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call2_lat_$name.txt | tr '\n' ' ')" | tee -a $S
}
CLI="python -m pagoda.entrypoints.cli --log-level WARNING"
# shellcheck disable=SC2086
run bf16 $CLI $LAT
# shellcheck disable=SC2086
run gptq_sweep python benchmarks/gpu/with_gemv_table.py --w4-table $W4_JSON -- --log-level WARNING $LAT \
  --quantization gptq
# shellcheck disable=SC2086
run gptq_table $CLI $LAT --quantization gptq
PAGODA_PDL=0 timeout 100 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --by-grid \
  --engine-args '{"quantization": "gptq"}' --w4-table $W4_JSON > $OUT/call2_profile_gptq_sweep.txt 2>&1
echo "profile rc=$?" | tee -a $S
grep -E "busy|_w4_gemv|grid" $OUT/call2_profile_gptq_sweep.txt | head -14 | tee -a $S
