#!/bin/bash
# Session 30, call 2: (1) the dense path for large M (Rule('deq'): weights dequantized to a transient bf16 copy, then
# torch.matmul) against the dot kernel at M 64, 256, 1024, 4096 (int4_gemv_sweep.py; winners to $OUT/w4big.json);
# its GPU tests; (2) in one call: bf16, W4A16 with the committed tables, W4A16 with the sweep's INT4_TABLE winners
# (the batch-64 step and both prefills: 512 and 64 x 512 tokens), and FP8 (issue 12's ratios on this machine).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call2_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $S
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null &
timeout 45 python -m pytest -q -p no:cacheprovider tests/kernels/test_int_weight_triton.py -k "deq or explicit" \
  > $OUT/call2_tests.txt 2>&1; echo "tests: $(tail -1 $OUT/call2_tests.txt)" | tee -a $S
timeout 110 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4big.json --ms 64 256 1024 4096 \
  > $OUT/call2_sweep.txt 2>&1
echo "sweep rc=$?" | tee -a $S
grep -E "floor|step linears|sweep took" $OUT/call2_sweep.txt | tee -a $S
grep -A4 "INT4_TABLE" $OUT/call2_sweep.txt | tee -a $S
wait
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
run() {  # name, command...
  local name=$1; shift
  timeout 70 "$@" > $OUT/call2_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call2_lat_$name.txt | tr '\n' ' ')" | tee -a $S
}
CLI="python -m pagoda.entrypoints.cli --log-level WARNING"
# shellcheck disable=SC2086
run bf16 $CLI $LAT
# shellcheck disable=SC2086
run gptq_table $CLI $LAT --quantization gptq
# shellcheck disable=SC2086
[ -f $OUT/w4big.json ] && run gptq_sweep python benchmarks/gpu/with_gemv_table.py --w4-table $OUT/w4big.json \
  -- --log-level WARNING $LAT --quantization gptq
# shellcheck disable=SC2086
run fp8 $CLI $LAT --quantization fp8
