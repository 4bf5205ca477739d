#!/bin/bash
# Session 25: n-gram speculation with the native decoder stack, verify steps (5 rows) on two threads
# (cpu_threads.SMALL_STEP_MAX_ROWS = 1: only 1-row steps on one thread) against the default (steps of <= 8 rows on
# one thread), alternating: benchmarks/spec_decode_cpu_bench.py --reps 1.
cd "$(git rev-parse --show-toplevel)"
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
D=benchmarks/results/cpu-2026-12-05-session25
for run in 1 2; do for rows in 1 8; do
  .venv/bin/python -c "
import runpy, sys
from pagoda.worker import cpu_threads
cpu_threads.SMALL_STEP_MAX_ROWS = $rows
sys.argv = ['spec_decode_cpu_bench.py', '--reps', '1']
runpy.run_path('benchmarks/spec_decode_cpu_bench.py', run_name='__main__')
" > $D/spec_rows${rows}_$run.txt 2>&1
  echo "one thread up to $rows rows, run $run: $(grep -E '\"(speedup|speedup_cpu_time|identical|tok_s_base|tok_s_spec|mean_acceptance_length|step_ratio)\"' $D/spec_rows${rows}_$run.txt | tr -s ' ' | tr '\n' ' ')"
done; done
