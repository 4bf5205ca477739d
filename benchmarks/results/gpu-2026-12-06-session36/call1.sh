#!/bin/bash
# Session 36, call 1 (carry ["wheels"]): the 4-bit sweep at 1-128 rows on whatever card comes (the 4-bit tables were
# tuned on H100s; session 35's H200 ran W4A16 batch 64 at 1.21x bf16), with new one-row candidates (GEMV tiles with
# more columns per thread, dot rules at one row); then decode steps bf16 / W4A16 (tree, and the sweep's winners) /
# FP8 at batch 1, 2, 64, same call. Also the new lift decode (Rule.lift) in the GPU tests and the sweep.
set -uo pipefail
export CAP=570
source benchmarks/results/gpu-2026-12-06-session36/lib.sh
step tests 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_int4_kernels.py tests/kernels/test_w4_gemv_triton.py
echo "tests: $(tail -1 $OUT/tests.txt)" | tee -a $S
step sweep 200 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 1 2 4 16 64 128
grep -E "step linears|INT4_TABLE|^    [0-9]+: Rule|took|floor" $OUT/sweep.txt | tee -a $S
for q in none gptq fp8; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  step lat_$q 60 $CLI $LAT $extra
  echo "latency $q: $(grep -E '^batch' $OUT/lat_$q.txt | tr '\n' ' ')" | tee -a $S
done
if [ -f $OUT/w4.json ]; then
  # shellcheck disable=SC2086
  step lat_gptq_winners 60 python benchmarks/gpu/with_gemv_table.py --w4-table $OUT/w4.json -- --log-level WARNING \
    $LAT --quantization gptq
  echo "latency gptq winners: $(grep -E '^batch' $OUT/lat_gptq_winners.txt | tr '\n' ' ')" | tee -a $S
  # shellcheck disable=SC2086
  step lat_gptq2 60 $CLI $LAT --quantization gptq
  echo "latency gptq (again): $(grep -E '^batch' $OUT/lat_gptq2.txt | tr '\n' ' ')" | tee -a $S
fi
exit 0
