#!/usr/bin/env bash
# Session 28: the Q8_0 LM head. Run from the repository root on the 2-core dev VM, nothing else running.
set -euo pipefail
D=benchmarks/results/cpu-2026-12-05-session28
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
python benchmarks/cpu_head_bench.py --rows 1 2 4 5 8 16 32 --reps 15 > $D/head_bench.txt 2>&1
python benchmarks/cpu_switch_ab.py --switch head-q8 --rounds 6 --batch-sizes 1 4 8 32 --max-tokens 64 2>&1 \
  | grep -v INFO > $D/ab_head_q8.txt
python benchmarks/cpu_floor_ratio.py --rounds 5 --max-tokens 128 2>&1 | grep -v INFO > $D/floor_ratio_128.txt
python benchmarks/cpu_floor_ratio.py --rounds 5 --max-tokens 256 2>&1 | grep -v INFO > $D/floor_ratio_256.txt
