#!/bin/bash
# Session 46, call 1 (carry ["wheels"], a `git archive HEAD` copy): Rule.swap, the 4-bit dot kernel with its operands
# swapped (the decoded weights as wgmma's register operand): its GPU tests, the sweep at 2-256 rows against the
# committed rules, then W4A16 decode steps with the committed tables and with the sweep's winners.
set -uo pipefail
export CAP=${CAP:-570}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step tests 150 python -m pytest -q -p no:cacheprovider tests/kernels/test_int_weight_triton.py \
  tests/gpu/test_gpu_int4_kernels.py
step sweep 300 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 2 16 64 128 256
grep -E "step linears|floor|took" $OUT/sweep.txt >> $S
sed -n '/CHOOSE/,/END CHOOSE/p' $OUT/sweep.txt >> $S
LAT="bench latency --model $M --load-format dummy --batch-size 1 2 16 64 --input-len 512 --output-len 32"
# shellcheck disable=SC2086
step lat_gptq 50 $CLI $LAT --quantization gptq
echo "latency gptq: $(grep -E '^batch' $OUT/lat_gptq.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" >> $S
if [ -f $OUT/w4.json ]; then
  # shellcheck disable=SC2086
  step lat_gptq_winners 50 python benchmarks/gpu/with_gemv_table.py --w4-table $OUT/w4.json -- --log-level WARNING \
    $LAT --quantization gptq
  echo "latency gptq winners: $(grep -E '^batch' $OUT/lat_gptq_winners.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" >> $S
fi
cat $S
exit 0
