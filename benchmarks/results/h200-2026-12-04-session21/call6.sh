#!/bin/bash
# Session 21, call 6: the FP8 V tile converted in registers (triton_kernels._attend): the served FP8 and bf16 caches
# in fp8_attention_sweep.py, then the FP8 KV tests compiled for the GPU.
set -uo pipefail
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
BW=$(python -c "import sys; sys.path.insert(0, 'benchmarks/gpu'); from bandwidth import device_copy_bandwidth as f; \
print(round(f(1 << 28) / 1e9))")
echo "copy bandwidth $BW GB/s" | tee $OUT/call6_fp8_attention.txt
timeout 100 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs $BW --served-only 2>&1 | tee -a $OUT/call6_fp8_attention.txt
timeout 120 python -m pytest -q -p no:cacheprovider tests/kernels/test_kv_fp8_kernels.py tests/gpu/test_gpu_kv_fp8.py \
  > $OUT/call6_tests.txt 2>&1; echo "tests rc=$?"; tail -3 $OUT/call6_tests.txt
