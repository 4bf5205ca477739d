#!/bin/bash
# Session 29, call 3: session 28's plan for the GPU machine's 16-core Xeon host (CPU only: the Q8_0 head, the decode
# attention's position chunks and the decoder stack's tests; the head bench at 16 threads; the decode attention with
# and without position chunks at 1/4/16 threads), then issue 17's verify-4 step cost (spec_verify_bench.sh).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
timeout 420 bash benchmarks/results/cpu-2026-12-05-session28/xeon_plan.sh
echo "xeon plan rc=$?"
timeout 170 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv 2>&1 | tee $OUT/call3_spec_verify.txt \
  | grep -E "^batch [0-9]+:"
