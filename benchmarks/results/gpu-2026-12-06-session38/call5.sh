#!/bin/bash
# Session 38, call 5 (carry ["wheels"]; asked for an H200): on an H200, issue 12's 4-bit one-row tables there (session
# 36's call 3: the 4-bit GPU tests, the sweep at 1 and 64 rows, decode steps bf16 / W4A16 with the committed tables
# and the sweep's winners); on an H100, the GEMV and verify-graph GPU tests with call 4's 5-row entries committed and
# the verify bench at batch 1 and 32.
set -uo pipefail
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  bash benchmarks/results/gpu-2026-12-06-session36/call3.sh
  exit 0
fi
export CAP=500
source benchmarks/results/gpu-2026-12-06-session38/lib.sh
step tests 200 python -m pytest -q -p no:cacheprovider tests/kernels/test_dense_gemv.py \
  tests/gpu/test_gpu_spec_verify_graphs.py
echo "tests: $(tail -1 $OUT/tests.txt)" | tee -a $S
step sv 200 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv
grep -E "^batch [0-9]+: decode" $OUT/sv.txt | tee -a $S
exit 0
