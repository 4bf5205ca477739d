#!/bin/bash
# Session 46, call 2 (same copy as call 1, call 1's w4.json beside it): W4A16 decode steps and ShareGPT-like
# throughput with the committed tables against call 1's winners (Rule.swap at 2-128 rows), bf16 in the same call.
set -uo pipefail
export CAP=${CAP:-580}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
W=benchmarks/results/gpu-2026-12-07-session46/call1/w4.json
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
TPW="bench throughput --model $M --load-format dummy --dataset sharegpt --num-prompts 300"
lat() { echo "latency $1: $(grep -E '^batch' $OUT/$1.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" >> $S; }
# shellcheck disable=SC2086
step lat_gptq_winners 60 python benchmarks/gpu/with_gemv_table.py --w4-table $W -- --log-level WARNING $LAT -q gptq; lat lat_gptq_winners
# shellcheck disable=SC2086
step lat_gptq 60 $CLI $LAT -q gptq; lat lat_gptq
# shellcheck disable=SC2086
step lat_bf16 60 $CLI $LAT; lat lat_bf16
for r in 1 2; do
  # shellcheck disable=SC2086
  step tp_gptq_winners_$r 70 python benchmarks/gpu/with_gemv_table.py --w4-table $W -- --log-level WARNING $TPW -q gptq
  # shellcheck disable=SC2086
  step tp_gptq_$r 70 $CLI $TPW -q gptq
done
# shellcheck disable=SC2086
step tp_bf16 70 $CLI $TPW
cat $S
exit 0
