#!/bin/bash
# Session 22, call 2: why the fp16-dot FP8 path (served, Q_NORM) was no faster than the bf16-dot one in call 1
# while an fp16 query (no row scaling) was 13-16 % faster: fp8_attention_sweep.py --probe (the dot dtype, the
# row scaling, pipeline stages, warps, tile width).
set -uo pipefail
export PYTHONUNBUFFERED=1
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
BW=$(python -c "import sys; sys.path.insert(0, 'benchmarks/gpu'); from bandwidth import device_copy_bandwidth as f; \
print(round(f(1 << 28) / 1e9))")
echo "copy bandwidth $BW GB/s" | tee $OUT/call2_probe.txt
timeout 400 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs $BW --probe 2>&1 | grep -v Warning \
  | tee -a $OUT/call2_probe.txt
