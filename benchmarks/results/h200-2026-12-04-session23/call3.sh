#!/bin/bash
# Session 23, call 3: (1) the GPU tests of this session's kernels (the several-row GEMV and the tensor-core rules'
# masked padding rows; the split-KV decode whose last split combines the partials; the arrival counters now shared
# by the 4-bit and FP8 GEMVs); (2) issue 21 item 5: the batch-1/4 decode step with the fused combine on and off
# (decode_ab.py --switch fused-split-combine); (3) for the next session's issue-12 work, batch-1 steps with
# programmatic dependent launch off (PAGODA_PDL=0: each kernel's own time), kernels by launch grid: bf16, FP8.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
ROOT=$PWD
export PYTHONPATH="$ROOT:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 200 python -m pytest -q -p no:cacheprovider tests/kernels/test_dense_gemv.py tests/kernels/test_pdl_protocol.py \
  tests/kernels/test_triton_attention.py tests/kernels/test_kv_fp8_kernels.py tests/kernels/test_w4_gemv_triton.py \
  tests/kernels/test_fp8_gemv_kernel.py tests/gpu/test_gpu_fp8_gemv.py tests/gpu/test_gpu_pdl.py \
  tests/gpu/test_gpu_parity.py tests/gpu/test_gpu_spec_verify_graphs.py tests/gpu/test_gpu_deterministic.py \
  tests/gpu/test_gpu_kv_fp8.py tests/gpu/test_gpu_int4_kernels.py > $OUT/call3_tests.txt 2>&1
echo "tests rc=$?"; tail -3 $OUT/call3_tests.txt
timeout 170 python benchmarks/gpu/decode_ab.py $M --switch fused-split-combine --batch 1 4 --rounds 2 2>&1 \
  | grep -v Warning | grep -E "^\[|bandwidth" | tee $OUT/call3_decode_ab.txt | grep -E "on/off"
for q in bf16 fp8; do
  ea='{}'; [ $q != bf16 ] && ea="{\"quantization\": \"$q\"}"
  PAGODA_PDL=0 timeout 70 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --by-grid --engine-args "$ea" \
    2>&1 | grep -v -i warn > $OUT/call3_nopdl_$q.txt; echo "profile $q rc=$?"; grep -A30 "^== batch" $OUT/call3_nopdl_$q.txt
done
