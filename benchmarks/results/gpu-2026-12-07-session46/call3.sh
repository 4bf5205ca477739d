#!/bin/bash
# Session 46, call 3 (as call 2): the decode steps at batch 1 and 64 (call 2's limits were too short for batch 64):
# W4A16 with call 1's winners, W4A16 committed, bf16.
set -uo pipefail
export CAP=${CAP:-560}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
W=benchmarks/results/gpu-2026-12-07-session46/call1/w4.json
LAT="bench latency --model $M --load-format dummy --batch-size 64 1 --input-len 512 --output-len 32"
lat() { echo "latency $1: $(grep -E '^batch' $OUT/$1.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" >> $S; }
# shellcheck disable=SC2086
step lat_gptq_winners 170 python benchmarks/gpu/with_gemv_table.py --w4-table $W -- --log-level WARNING $LAT -q gptq; lat lat_gptq_winners
# shellcheck disable=SC2086
step lat_gptq 170 $CLI $LAT -q gptq; lat lat_gptq
# shellcheck disable=SC2086
step lat_bf16 170 $CLI $LAT; lat lat_bf16
cat $S
exit 0
