#!/bin/bash
# Call 1 (H200): this session's GPU tests (constrained verify steps in a graph, the no-sync verify launch), then
# issue 12's decode steps (bf16 / W4A16 / FP8 at batch 1, 2, 64; session 32's next.sh, first half).
set -uo pipefail
export CAP=580
source benchmarks/results/gpu-2026-12-05-session34/lib.sh
step tests 200 python -m pytest -q -x -p no:cacheprovider tests/gpu/test_gpu_spec_verify_graphs.py \
  tests/gpu/test_gpu_spec_no_sync.py
tail -3 $OUT/tests.txt | tee -a $S
for q in none gptq fp8; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  step lat_$q 100 $CLI $LAT $extra
  echo "latency $q: $(grep -E '^batch' $OUT/lat_$q.txt | tr '\n' ' ')" | tee -a $S
done
exit 0
