#!/bin/bash
# Session 32, call 2 (same warm machine): issue 12's decode steps bf16 / W4A16 / FP8 at batch 1, 2, 64; the W8A16
# u8 kernel against the dense copy at 64/256/1024 rows; W4A16 ShareGPT throughput; a second bf16 / FP8 round.
set -uo pipefail
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
for q in none gptq fp8; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  step lat_$q 85 $CLI $LAT $extra
  echo "latency $q: $(grep -E '^batch' $OUT/lat_$q.txt | tr '\n' ' ')" | tee -a $S
done
step u8 100 python benchmarks/gpu/int_weight_sweep.py --only u8 --ms 64 256 1024
grep -E "step linears|chosen|^    [0-9B]" $OUT/u8.txt | tee -a $S
# shellcheck disable=SC2086
step tp_gptq 90 $CLI $TP --quantization gptq
# shellcheck disable=SC2086
step tp_fp8_on_r2 90 $CLI $TP --quantization fp8 --kv-cache-dtype fp8
# shellcheck disable=SC2086
step tp_bf16_r2 90 $CLI $TP
grep -HE "req/s|Throughput" $OUT/tp_*.txt | tee -a $S
exit 0
