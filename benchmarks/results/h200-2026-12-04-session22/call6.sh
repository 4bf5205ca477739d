#!/bin/bash
# Session 22, call 6: the attention tests compiled for the GPU with the final FP8 read path (constant 2^-4 query scale).
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp >/dev/null 2>&1
export PYTHONPATH="$PWD:/tmp/site"
timeout 250 python -m pytest -q -p no:cacheprovider tests/kernels/test_triton_attention.py \
  tests/gpu/test_gpu_window_softcap.py tests/kernels/test_pdl_protocol.py > $OUT/call6_tests.txt 2>&1
echo "rc=$?"; tail -3 $OUT/call6_tests.txt
