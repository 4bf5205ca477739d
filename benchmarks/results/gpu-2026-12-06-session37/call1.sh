#!/bin/bash
# Session 37, call 1 (carry ["wheels"]): the speculative verify graphs' GPU tests (suffix decoding's drafts of varying
# length padded in the graph, drafts longer than 16), then on an H200 issue 12's 4-bit one-row tables, never tuned
# there: the sweep at 1 and 64 rows, decode steps bf16 / W4A16 with the committed tables and with the sweep's
# winners; on an H100 (tuned in session 36) issue 17's verify-4 step instead.
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-06-session37/lib.sh
step tests 170 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_spec_verify_graphs.py \
  tests/test_spec_decode.py -k "suffix or verify_steps or drafts_longer or greedy_identical"
echo "tests: $(tail -1 $OUT/tests.txt)" | tee -a $S
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  bash benchmarks/results/gpu-2026-12-06-session36/call3.sh  # its 4-bit tests, sweep and latency A/B (call2.sh too)
else
  step spec_verify 200 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv
  grep -E "^batch [0-9]+: decode" $OUT/spec_verify.txt | tee -a $S
fi
exit 0
