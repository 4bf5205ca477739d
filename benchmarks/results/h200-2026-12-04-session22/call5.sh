#!/bin/bash
# Session 22, call 5: the batch-256 decode step's kernels, FP8 weights + FP8 KV (with the fp16-dot attention) and bf16.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
[ -d $M ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
for arm in fp8 bf16; do
  args='{"quantization": "fp8", "kv_cache_dtype": "fp8"}'; [ $arm = bf16 ] && args='{}'
  timeout 120 python benchmarks/gpu/profile_steps.py $M --batch 256 --steps 10 --engine-args "$args" \
    > $OUT/call5_profile_$arm.txt 2>&1; echo "profile $arm rc=$?"; grep -E "^== |^  +[0-9.]+ ms" $OUT/call5_profile_$arm.txt | head -9
done
