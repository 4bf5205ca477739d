#!/bin/bash
# Call 4 (for an H200): issue 12's decode steps and throughput and issue 17's verify-4 step in one call (calls 1-2
# without the tests).
set -uo pipefail
export CAP=580
source benchmarks/results/gpu-2026-12-05-session34/lib.sh
for q in none gptq fp8; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  step lat_$q 100 $CLI $LAT $extra
  echo "latency $q: $(grep -E '^batch' $OUT/lat_$q.txt | tr '\n' ' ')" | tee -a $S
done
# shellcheck disable=SC2086
step tp_bf16 90 $CLI $TP
# shellcheck disable=SC2086
step tp_fp8_on 90 $CLI $TP --quantization fp8 --kv-cache-dtype fp8
grep -HE "req/s" $OUT/tp_*.txt | tee -a $S
step spec_verify 170 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec
tail -2 $OUT/spec_verify.txt | tee -a $S
exit 0
