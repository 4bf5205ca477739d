#!/bin/bash
# (After this call the TMA GEMV, Rule.tma and w4_tma_sweep.py were removed: it lost; they are at commit 6ceb518.)
# Session 47, call 1 (carry ["wheels"]; the working tree): the one-row 4-bit GEMV by TMA (triton_w4_gemv_tma.py)
# swept against today's rule on the Llama-3-8B linears; then the W4A16 batch-1 decode step with today's tables and
# with the sweep's TMA winners (with_gemv_table.py --w4-table), alternating, and bf16 for the ratio; then the GGUF and
# 4-bit GPU tests (session 46's swapped dot never ran them) and the TMA GEMV's own tests compiled.
set -uo pipefail
export CAP=${CAP:-585}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step tma_sweep 280 python benchmarks/gpu/w4_tma_sweep.py --json $OUT/tma.json --tables $OUT/tma_tables.json
grep -E "floor .* bf16|step of linears|copy bandwidth|^    \(1," $OUT/tma_sweep.txt >> $S
LAT1="bench latency --model $M --load-format dummy --batch-size 1 --input-len 512 --output-len 32"
W="python benchmarks/gpu/with_gemv_table.py"
if [ -f $OUT/tma_tables.json ]; then
  # shellcheck disable=SC2086
  step lat_gptq_now 60 $CLI $LAT1 -q gptq
  # shellcheck disable=SC2086
  step lat_gptq_tma 60 $W --w4-table $OUT/tma_tables.json -- --log-level WARNING $LAT1 -q gptq
  # shellcheck disable=SC2086
  step lat_bf16 60 $CLI $LAT1
  # shellcheck disable=SC2086
  step lat_gptq_tma2 60 $W --w4-table $OUT/tma_tables.json -- --log-level WARNING $LAT1 -q gptq
  # shellcheck disable=SC2086
  step lat_gptq_now2 60 $CLI $LAT1 -q gptq
fi
step gpu_tests 120 python -m pytest -q -p no:cacheprovider -x tests/kernels/test_int_weight_triton.py tests/gpu/test_gpu_gguf.py tests/gpu/test_gpu_int4_kernels.py
cat $S
exit 0
