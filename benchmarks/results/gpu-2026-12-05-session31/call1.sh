#!/bin/bash
# Session 31, call 1 (carry ["wheels"]): the 4-bit kernels' GPU tests with the paired decode (and session 30's final
# GEMV code, never run on a GPU), then the sweep at 16/64/128/256 rows: every dot rule paired and fp32.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call1_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $S
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json /tmp/llama3-8b-shape >/dev/null 2>&1 &
timeout 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_int4_kernels.py \
  tests/kernels/test_int_weight_triton.py tests/kernels/test_w4_gemv_triton.py > $OUT/call1_tests.txt 2>&1
echo "tests: $(tail -1 $OUT/call1_tests.txt)" | tee -a $S
grep -E "^FAILED|Error" $OUT/call1_tests.txt | head -20 | tee -a $S
timeout 330 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 16 64 128 256 > $OUT/call1_sweep.txt 2>&1
echo "sweep rc=$?" | tee -a $S
grep -E "copy bandwidth|step linears|INT4_TABLE|^    [0-9]+: Rule|took" $OUT/call1_sweep.txt | tee -a $S
wait
cp $OUT/w4.json /tmp/w4_call1.json 2>/dev/null
