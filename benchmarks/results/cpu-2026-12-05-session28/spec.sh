#!/bin/bash
# Session 28: issue 17's CPU n-gram speed-up with the Q8_0 LM head:
# benchmarks/spec_decode_cpu_bench.py --reps 1, twice.
cd "$(git rev-parse --show-toplevel)"
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
D=benchmarks/results/cpu-2026-12-05-session28
for run in 1 2; do
  .venv/bin/python benchmarks/spec_decode_cpu_bench.py --reps 1 > $D/spec_$run.txt 2>&1
  echo "run $run: $(grep -E '\"(speedup|speedup_cpu_time|identical|tok_s_base|tok_s_spec|mean_acceptance_length|step_ratio)\"' $D/spec_$run.txt | tr -s ' ' | tr '\n' ' ')"
done
