#!/bin/bash
# Session 45, call 3 (carry ["wheels"], the same `git archive HEAD` copy): issue 12's FP8 + FP8 KV throughput at
# vLLM's default --num-prompts 1000 again, the order reversed against call 2 (fp8, bf16, bf16, fp8).
set -uo pipefail
export CAP=${CAP:-400}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
for q in fp8 bf16 bf16 fp8; do
  extra=""; [ $q = bf16 ] || extra="--quantization fp8 --kv-cache-dtype fp8"
  n=1; [ -f $OUT/tp1000_${q}_1.txt ] && n=2
  # shellcheck disable=SC2086
  step tp1000_${q}_$n 60 $CLI bench throughput --model $M --load-format dummy --dataset sharegpt --num-prompts 1000 $extra
done
cat $S
exit 0
