#!/bin/bash
# Session 26, call 1: (1) the GPU kernel tests of code changed since the last GPU call (session 23: the split-KV
# decode's fused combine, the shared arrival counters, _combine_splits' cache modifier, the masked tensor-core GEMV
# rows); (2) decode_ab.py --switch fused-split-combine (off by default, never measured); (3) issue 17's verify-4
# step against a plain decode step (spec_verify_bench.sh).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
BW=$(python -c "import sys; sys.path.insert(0, 'benchmarks/gpu'); from bandwidth import device_copy_bandwidth as f; \
print(round(f(1 << 28) / 1e9))")
echo "copy bandwidth $BW GB/s" | tee $OUT/call1_summary.txt
timeout 200 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_triton_attention.py \
  tests/kernels/test_w4_gemv_triton.py tests/kernels/test_fp8_gemv_kernel.py tests/gpu/test_gpu_fp8_gemv.py \
  tests/gpu/test_gpu_int4_kernels.py tests/kernels/test_dense_gemv.py tests/kernels/test_pdl_protocol.py \
  > $OUT/call1_tests.txt 2>&1; echo "tests rc=$?" | tee -a $OUT/call1_summary.txt
tail -3 $OUT/call1_tests.txt | tee -a $OUT/call1_summary.txt
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 200 python benchmarks/gpu/decode_ab.py $M --switch fused-split-combine --batch 1 4 --rounds 2 2>&1 \
  | grep -v Warning | grep -E "^\[|bandwidth|on/off" | tee $OUT/call1_decode_ab.txt | tee -a $OUT/call1_summary.txt
timeout 200 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv 2>&1 | tee $OUT/call1_spec_verify.txt \
  | grep -E "^batch [0-9]+:" | tee -a $OUT/call1_summary.txt
