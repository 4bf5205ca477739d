#!/bin/bash
# verify steps (5 rows) on two threads (SMALL_STEP_MAX_ROWS 4) against one (8, the default)
cd "$(git rev-parse --show-toplevel)"
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
for run in 1 2; do for arm in 4 8; do
  .venv/bin/python -c "
import runpy, sys
from pagoda.worker import cpu_threads
cpu_threads.SMALL_STEP_MAX_ROWS = $arm
sys.argv = ['spec_decode_cpu_bench.py', '--reps', '1']
runpy.run_path('benchmarks/spec_decode_cpu_bench.py', run_name='__main__')
" > benchmarks/results/cpu-2026-12-04-session22/thr_${arm}_$run.txt 2>&1
  echo "max rows $arm run $run: $(grep -E '\"(speedup|tok_s_base|tok_s_spec|identical)\"' benchmarks/results/cpu-2026-12-04-session22/thr_${arm}_$run.txt | tr -s ' ' | tr '\n' ' ')"
done; done
