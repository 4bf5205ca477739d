#!/bin/bash
# Session 46, call 4 (carry ["wheels"], a `git archive HEAD` copy with the swapped-dot tables committed): the 4-bit
# GPU tests (every table dot rule at its bucket's M, bf16 and fp32), then ShareGPT-like throughput at vLLM's default
# 1,000 prompts, W4A16 and bf16 alternating.
set -uo pipefail
export CAP=${CAP:-560}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step tests 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_int4_kernels.py \
  tests/kernels/test_int_weight_triton.py tests/kernels/test_w4_gemv_triton.py
TPK="bench throughput --model $M --load-format dummy --dataset sharegpt --num-prompts 1000"
i=0
for q in gptq bf16 gptq bf16; do
  extra=""; [ $q = bf16 ] || extra="-q gptq"
  # shellcheck disable=SC2086
  step tp1000_${q}_$((++i)) 80 $CLI $TPK $extra
done
cat $S
exit 0
