#!/bin/bash
# Session 49, call 2 (carry ["wheels"]): the one-row 4-bit GEMV's time against its split-K count (is the last wave's
# tail what keeps gate_up and down at 1.4x their floor?).
set -uo pipefail
export CAP=${CAP:-300}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step split_probe 240 python benchmarks/gpu/w4_split_probe.py
cat $OUT/split_probe.txt
exit 0
