#!/bin/bash
# Session 26: issue 17's CPU n-gram speed-up with the decoder stack's thread team (on) and the stack on one thread (off,
# THREADS = 1), alternating: benchmarks/spec_decode_cpu_bench.py --reps 1, the switch set before the bench runs.
cd "$(git rev-parse --show-toplevel)"
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
D=benchmarks/results/cpu-2026-12-05-session26
for run in 1 2; do for arm in on off; do
  .venv/bin/python -c "
import runpy, sys
from pagoda.models import cpu_decoder_stack
cpu_decoder_stack.THREADS = 0 if '$arm' == 'on' else 1
sys.argv = ['spec_decode_cpu_bench.py', '--reps', '1']
runpy.run_path('benchmarks/spec_decode_cpu_bench.py', run_name='__main__')
" > $D/spec_${arm}_$run.txt 2>&1
  echo "$arm $run: $(grep -E '\"(speedup|speedup_cpu_time|identical|tok_s_base|tok_s_spec|mean_acceptance_length|step_ratio)\"' $D/spec_${arm}_$run.txt | tr -s ' ' | tr '\n' ' ')"
done; done
