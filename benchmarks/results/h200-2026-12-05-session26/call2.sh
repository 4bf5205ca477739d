#!/bin/bash
# Session 26, call 2: issue 12's GPU ratios on main (Llama-3-8B shape, dummy weights): the batch-1 and batch-64
# decode steps of bf16, W4A16 (GPTQ layout) and FP8 weights (`bench latency`), and the ShareGPT-like throughput of
# FP8 weights + FP8 KV against bf16 (`bench throughput`, 300 prompts).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
CLI="python -m pagoda.entrypoints.cli --log-level WARNING"
for q in bf16 gptq fp8; do
  extra=""; [ $q != bf16 ] && extra="--quantization $q"
  # shellcheck disable=SC2086
  timeout 150 $CLI bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32 \
    $extra > $OUT/call2_lat_$q.txt 2>&1
  echo "latency $q: $(grep -E '^batch' $OUT/call2_lat_$q.txt | tr '\n' ' ')" | tee -a $OUT/call2_summary.txt
done
for q in bf16 fp8; do
  extra=""; [ $q = fp8 ] && extra="--quantization fp8 --kv-cache-dtype fp8"
  # shellcheck disable=SC2086
  timeout 170 $CLI bench throughput --model $M --load-format dummy --dataset sharegpt --num-prompts 300 $extra \
    > $OUT/call2_tp_$q.txt 2>&1
  echo "throughput $q: $(grep -E 'req/s' $OUT/call2_tp_$q.txt | tail -2 | tr '\n' ' ')" | tee -a $OUT/call2_summary.txt
done
