#!/bin/bash
# Session 37, call 4 (carry ["wheels"]): the H100's own 5-row qkv entry (dense_gemv.DEVICE_GEMV_TABLE): the dense GEMV
# tests on CUDA, then issue 17's verify-4 step with the entry (the default) and without it
# (DEVICE_GEMV_TABLE={} through with_module_values.py), alternating on one machine: on, off, on, off.
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-06-session37/lib.sh
step tests 90 python -m pytest -q -p no:cacheprovider tests/kernels/test_dense_gemv.py
echo "tests: $(tail -1 $OUT/tests.txt)" | tee -a $S
OFF="python benchmarks/gpu/with_module_values.py pagoda.layers.dense_gemv.DEVICE_GEMV_TABLE={} --"
for r in 1 2; do
  step sv_on$r 110 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv_on$r
  grep -E "^batch 1: decode" $OUT/sv_on$r.txt | sed "s/^/entry on  ($r): /" | tee -a $S
  PAGODA_CLI="$OFF" step sv_off$r 110 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv_off$r
  grep -E "^batch 1: decode" $OUT/sv_off$r.txt | sed "s/^/entry off ($r): /" | tee -a $S
done
exit 0
