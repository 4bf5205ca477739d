#!/bin/bash
# Session 36, call 3 (carry ["wheels"]): the committed one-row tables (lift / column blocks on by default) through
# the GPU tests of the 4-bit kernels and a GGUF model quantized on the GPU; on an H200 (whose 4-bit tables were never
# tuned) the sweep at 1 and 64 rows; then decode steps bf16 / W4A16 (tree; and the sweep's winners on an H200).
set -uo pipefail
export CAP=420
source benchmarks/results/gpu-2026-12-06-session36/lib.sh
step tests 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_gguf.py tests/gpu/test_gpu_int4_kernels.py \
  tests/kernels/test_w4_gemv_triton.py
echo "tests: $(tail -1 $OUT/tests.txt)" | tee -a $S
H200=0; nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && H200=1
if [ $H200 = 1 ]; then
  step sweep 150 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 1 64
  grep -E "step linears|floor|took" $OUT/sweep.txt | tee -a $S
  sed -n '/CHOOSE/,/END CHOOSE/p' $OUT/sweep.txt >> $S
fi
for q in none gptq; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  step lat_$q 60 $CLI $LAT $extra
  echo "latency $q: $(grep -E '^batch' $OUT/lat_$q.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" | tee -a $S
done
if [ -f $OUT/w4.json ]; then
  # shellcheck disable=SC2086
  step lat_gptq_winners 60 python benchmarks/gpu/with_gemv_table.py --w4-table $OUT/w4.json -- --log-level WARNING \
    $LAT --quantization gptq
  echo "latency gptq winners: $(grep -E '^batch' $OUT/lat_gptq_winners.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" | tee -a $S
fi
exit 0
