#!/bin/bash
# Session 29, call 1: (1) the 4-bit GEMV's tests compiled for the GPU (decodes 0/1/2: the denormal decodes must not be
# flushed to zero there); (2) int4_gemv_sweep.py with decode 0/1/2 candidates (winners to $OUT/w4.json and
# /tmp/w4.json for call 2), and the dot kernel with one tl.dot per K tile ("tile") beside it at M = 16 and 64.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm --format=csv,noheader | tee $OUT/call1_summary.txt
timeout 170 python -m pytest -q -x -p no:cacheprovider -k "decode2 or not decode" tests/kernels/test_w4_gemv_triton.py \
  tests/gpu/test_gpu_int4_kernels.py tests/kernels/test_int_weight_triton.py > $OUT/call1_tests.txt 2>&1; echo "tests rc=$?" | tee -a $OUT/call1_summary.txt
tail -3 $OUT/call1_tests.txt | tee -a $OUT/call1_summary.txt
timeout 400 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json > $OUT/call1_sweep.txt 2>&1
echo "sweep rc=$?" | tee -a $OUT/call1_summary.txt
cp $OUT/w4.json /tmp/w4.json 2>/dev/null
grep -E "bandwidth|^M=|floor|step linears|Rule\(|sweep took" $OUT/call1_sweep.txt | grep -v "^    Rule" \
  | tee -a $OUT/call1_summary.txt
