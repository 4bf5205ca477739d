#!/bin/bash
# Session 37, call 2 (carry ["wheels"]): only on an H200 (else it stops at once): issue 12's 4-bit one-row tables,
# never tuned there: the 4-bit GPU tests, the sweep at 1 and 64 rows, decode steps bf16 / W4A16 with the committed
# tables and with the sweep's winners (session 36's call3.sh).
set -uo pipefail
if ! nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  nvidia-smi --query-gpu=name --format=csv,noheader; echo "not an H200: nothing run"; exit 0
fi
bash benchmarks/results/gpu-2026-12-06-session36/call3.sh
