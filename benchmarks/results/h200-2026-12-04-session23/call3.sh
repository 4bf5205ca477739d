#!/bin/bash
# Session 23, call 3: (1) the GPU tests of the final GEMV code (the several-row CUDA-core kernel, the tensor-core
# rules' masked padding rows) and of the paths that take it; (2) for the next session's issue-12 work, batch-1 steps
# with programmatic dependent launch off (PAGODA_PDL=0), so that each kernel's time is its own and not its wait for
# the previous one: bf16, FP8 and GPTQ 4-bit (profile_steps.py), Llama-3-8B shape, dummy weights.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
ROOT=$PWD
export PYTHONPATH="$ROOT:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 300 python -m pytest -q -p no:cacheprovider tests/kernels/test_dense_gemv.py tests/kernels/test_pdl_protocol.py \
  tests/gpu/test_gpu_pdl.py tests/gpu/test_gpu_parity.py tests/gpu/test_gpu_spec_verify_graphs.py \
  tests/gpu/test_gpu_deterministic.py > $OUT/call3_tests.txt 2>&1; echo "tests rc=$?"; tail -3 $OUT/call3_tests.txt
for q in bf16 fp8 gptq; do
  ea='{}'; [ $q != bf16 ] && ea="{\"quantization\": \"$q\"}"
  PAGODA_PDL=0 timeout 100 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --by-grid --engine-args "$ea" 2>&1 \
    | grep -v -i warn > $OUT/call3_nopdl_$q.txt; echo "profile $q rc=$?"; grep -A40 "^== batch" $OUT/call3_nopdl_$q.txt
done
