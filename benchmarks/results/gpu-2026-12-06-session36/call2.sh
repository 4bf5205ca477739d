#!/bin/bash
# Session 36, call 2 (the same H100, warm): W4A16 decode steps at batch 1 and 2 with session 35's one-row rule
# (w4_old.json) against call 1's winners (w4_new.json: lift + prefetch 2 for qkv/o, prefetch 2 for the large class,
# per-shape entries for gate_up (2 column blocks) and down (lift)), alternating, three rounds.
set -uo pipefail
export CAP=300
source benchmarks/results/gpu-2026-12-06-session36/lib.sh
D=benchmarks/results/gpu-2026-12-06-session36
L1="bench latency --model $M --load-format dummy --batch-size 1 2 --input-len 512 --output-len 64 --quantization gptq"
for r in 1 2 3; do
  for arm in old new; do
    # shellcheck disable=SC2086
    step ab_${arm}_$r 40 python benchmarks/gpu/with_gemv_table.py --w4-table $D/w4_$arm.json -- --log-level WARNING $L1
    echo "$arm $r: $(grep -E '^batch' $OUT/ab_${arm}_$r.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" | tee -a $S
  done
done
exit 0
