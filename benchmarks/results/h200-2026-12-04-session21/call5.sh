#!/bin/bash
# Session 21, call 5: the unified attention kernel on 256 decode rows over FP8 vs bf16 caches (fp8_attention_sweep.py),
# its floors at the copy bandwidth measured in the same call.
set -uo pipefail
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
BW=$(python -c "import sys; sys.path.insert(0, 'benchmarks/gpu'); from bandwidth import device_copy_bandwidth as f; \
print(round(f(1 << 28) / 1e9))")
echo "copy bandwidth $BW GB/s" | tee $OUT/call5_fp8_attention.txt
timeout 300 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs $BW 2>&1 | tee -a $OUT/call5_fp8_attention.txt
