#!/bin/bash
# For the next device session (not run in session 32, whose calls were all on H100s): this session's code on an
# H200, where issue 12's and 17's targets were first measured. One call (< 600 s; carry ["wheels"]):
# issue 12's decode steps (bf16 / W4A16 / FP8 at batch 1, 2, 64), ShareGPT-like throughput bf16 and FP8 + FP8 KV
# with the FP8 rows on and off, issue 17's verify-4 step. Run from the repository root: bash <this file>.
set -uo pipefail
export CAP=580
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
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
# shellcheck disable=SC2086
step tp_fp8_off 80 $WMV pagoda.models.llama.FP8_ROWS=False -- --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8
grep -HE "req/s" $OUT/tp_*.txt | tee -a $S
step spec_verify 150 bash benchmarks/gpu/spec_verify_bench.sh
tail -2 $OUT/spec_verify.txt | tee -a $S
exit 0
