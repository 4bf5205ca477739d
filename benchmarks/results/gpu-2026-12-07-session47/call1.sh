#!/bin/bash
# Session 47, call 1 (carry ["wheels"]; the working tree at e9a4804 plus the uncommitted TMA GEMV): the one-row 4-bit
# GEMV by TMA (triton_w4_gemv_tma.py) swept against today's rule on the Llama-3-8B linears, then the GGUF and 4-bit (with the TMA GEMV's tests compiled)
# GPU tests that session 46's swapped dot never ran.
set -uo pipefail
export CAP=${CAP:-560}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step tma_sweep 330 python benchmarks/gpu/w4_tma_sweep.py --json $OUT/tma.json
grep -E "floor .* bf16|step of linears|copy bandwidth" $OUT/tma_sweep.txt >> $S
step gpu_tests 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_gguf.py tests/gpu/test_gpu_int4_kernels.py tests/kernels/test_int_weight_triton.py
cat $S
exit 0
