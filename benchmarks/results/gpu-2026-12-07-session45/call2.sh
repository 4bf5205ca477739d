#!/bin/bash
# Session 45, call 2 (carry ["wheels"], run from a `git archive HEAD` copy): issue 12 on this card. On an H200 (whose
# 4-bit one-row tables were never tuned there) the 4-bit sweep at 1 and 64 rows; decode steps bf16 / W4A16 / FP8 with
# the committed tables, W4A16 with the sweep's winners; ShareGPT-like throughput bf16 / FP8 + FP8 KV at 300 and
# 1,000 prompts, alternating.
set -uo pipefail
export CAP=${CAP:-580}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
H200=0; nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && H200=1
if [ $H200 = 1 ]; then
  step sweep 170 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 1 64
  grep -E "step linears|floor|took" $OUT/sweep.txt >> $S
  sed -n '/CHOOSE/,/END CHOOSE/p' $OUT/sweep.txt >> $S
fi
for q in none gptq fp8; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  step lat_$q 70 $CLI $LAT $extra
  echo "latency $q: $(grep -E '^batch' $OUT/lat_$q.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" >> $S
done
if [ -f $OUT/w4.json ]; then
  # shellcheck disable=SC2086
  step lat_gptq_winners 70 python benchmarks/gpu/with_gemv_table.py --w4-table $OUT/w4.json -- --log-level WARNING \
    $LAT --quantization gptq
  echo "latency gptq winners: $(grep -E '^batch' $OUT/lat_gptq_winners.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" >> $S
fi
for n in 1000 300; do
  for q in bf16 fp8; do
    extra=""; [ $q = bf16 ] || extra="--quantization fp8 --kv-cache-dtype fp8"
    # shellcheck disable=SC2086
    step tp${n}_$q 60 $CLI bench throughput --model $M --load-format dummy --dataset sharegpt --num-prompts $n $extra
  done
done
cat $S
exit 0
