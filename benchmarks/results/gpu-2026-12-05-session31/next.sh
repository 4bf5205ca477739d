#!/bin/bash
# For the next device session (not run in session 31; pass carry ["wheels"], ideally on an H200, where issue 12's
# figures were set): (0) the 4-bit GPU tests; (1) W8A16 u8 kernel vs the dense copy at 64/256/1024 rows (U8_TABLE still runs u8 at every M);
# (2) issue 12's ratios with session 31's 4-bit code: bf16 / W4A16 / FP8 decode steps at batch 1, 2, 64;
# (3) ShareGPT-like throughput: bf16, W4A16 (39.9 vs 50.5 req/s in session 30) and FP8 + FP8 KV (target 1.25x;
# 1.166x in session 30). Two calls on one warm machine: `bash next.sh a`, then `bash next.sh b` (each < 600 s).
set -uo pipefail
PART=${1:-a}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d /tmp/site/fastapi ] || python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site:$PWD/benchmarks/gpu"
S=$OUT/next_${PART}_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $S
M=/tmp/llama3-8b-shape
[ -f $M/config.json ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null 2>&1 &
if [ "$PART" = a ]; then
# the 4-bit kernels' GPU tests first: session 31's review mends (shared _words/_weights, one asm string per dtype)
# were compiled only on the CPU (sm_90 SASS identical in counts), never run on a GPU
timeout 100 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_int4_kernels.py tests/kernels/test_int_weight_triton.py \
  > $OUT/next_tests.txt 2>&1
echo "tests: $(tail -1 $OUT/next_tests.txt)" | tee -a $S
timeout 100 python benchmarks/gpu/int_weight_sweep.py --only u8 --ms 64 256 1024 > $OUT/next_u8.txt 2>&1
grep -E "step linears|chosen|^    [0-9B]" $OUT/next_u8.txt | tee -a $S
wait
LAT="bench latency --model $M --load-format dummy --batch-size 1 2 64 --input-len 512 --output-len 32"
for q in none gptq fp8; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  timeout 85 python -m pagoda.entrypoints.cli --log-level WARNING $LAT $extra > $OUT/next_lat_$q.txt 2>&1
  echo "latency $q: $(grep -E '^batch' $OUT/next_lat_$q.txt | tr '\n' ' ')" | tee -a $S
done
exit 0
fi
wait
TP="bench throughput --model $M --load-format dummy --dataset sharegpt --num-prompts 300"
# shellcheck disable=SC2086
timeout 90 python -m pagoda.entrypoints.cli --log-level WARNING $TP > $OUT/next_tp_bf16.txt 2>&1
# shellcheck disable=SC2086
timeout 90 python -m pagoda.entrypoints.cli --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8 \
  > $OUT/next_tp_fp8.txt 2>&1
# shellcheck disable=SC2086
timeout 90 python -m pagoda.entrypoints.cli --log-level WARNING $TP --quantization gptq > $OUT/next_tp_gptq.txt 2>&1
grep -HE "req/s|Throughput" $OUT/next_tp_*.txt | tee -a $S
