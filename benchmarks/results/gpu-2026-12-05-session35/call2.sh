#!/bin/bash
# Session 35, call 2 (the same H200, warm; ~500 device s left): issue 12's H200 figures with this code, the first
# since session 26 — decode steps bf16 / W4A16 / FP8 at batch 1, 2, 64, ShareGPT-like throughput bf16 and FP8 + FP8 KV
# (session 32's next.sh without the FP8-rows A/B and the verify step, which call 1 measured).
set -uo pipefail
export CAP=430
source benchmarks/results/gpu-2026-12-05-session34/lib.sh
for q in none gptq fp8; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  step lat_$q 85 $CLI $LAT $extra
  echo "latency $q: $(grep -E '^batch' $OUT/lat_$q.txt | tr '\n' ' ')" | tee -a $S
done
# shellcheck disable=SC2086
step tp_bf16 80 $CLI $TP
# shellcheck disable=SC2086
step tp_fp8_on 80 $CLI $TP --quantization fp8 --kv-cache-dtype fp8
grep -HE "req/s" $OUT/tp_*.txt | tee -a $S
exit 0
