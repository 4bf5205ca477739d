#!/bin/bash
# For the next device session (not run in session 30; pass carry ["wheels"]): (1) the 4-bit kernels' GPU tests with
# the final code (the dense copy's bf16 exactness never ran on a GPU); (2) the sweep at 1, 2, 64, 128 and 256 rows
# (128 was not measured: dot vs the dense copy); (3) issue 12's ratios in one call: bf16, W4A16, FP8 latency.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/next_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $S
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null &
timeout 150 python -m pytest -q -p no:cacheprovider tests/kernels/test_int_weight_triton.py \
  tests/gpu/test_gpu_int4_kernels.py tests/kernels/test_w4_gemv_triton.py > $OUT/next_tests.txt 2>&1
echo "tests: $(tail -1 $OUT/next_tests.txt)" | tee -a $S
timeout 150 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 1 2 64 128 256 > $OUT/next_sweep.txt 2>&1
echo "sweep rc=$?" | tee -a $S
grep -E "step linears|INT4_TABLE|^    [0-9]+: Rule" $OUT/next_sweep.txt | tee -a $S
wait
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
for q in none gptq fp8; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  timeout 75 python -m pagoda.entrypoints.cli --log-level WARNING $LAT $extra > $OUT/next_lat_$q.txt 2>&1
  echo "latency $q: $(grep -E '^batch' $OUT/next_lat_$q.txt | tr '\n' ' ')" | tee -a $S
done
