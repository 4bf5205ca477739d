#!/bin/bash
# Session 26, call 3 (run as one command line on the warm machine after call 2): where a batch-1 step goes by kernel,
# without PDL (each kernel's time its own), bf16 / FP8 / W4A16 (GPTQ layout).
export PYTHONUNBUFFERED=1
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp >/dev/null 2>&1
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
[ -d $M ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
for q in none fp8 gptq; do
  ea='{}'; [ $q != none ] && ea="{\"quantization\": \"$q\"}"
  PAGODA_PDL=0 timeout 110 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --by-grid --engine-args "$ea" \
    > $OUT/call3_profile_$q.txt 2>&1
  echo "$q rc=$?"
done
