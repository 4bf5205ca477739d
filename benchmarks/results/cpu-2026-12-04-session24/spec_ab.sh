#!/bin/bash
# Session 24: issue 17's CPU n-gram speed-up with the bf16-dot int4 kernel (on) and torch's int4pack arithmetic
# (off: cpu_int4_native / torch's kernel), alternating: benchmarks/spec_decode_cpu_bench.py --reps 1, the switch set
# before the bench runs.
cd "$(git rev-parse --show-toplevel)"
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH=.
D=benchmarks/results/cpu-2026-12-04-session24
for run in 1 2; do for arm in on off; do
  .venv/bin/python -c "
import runpy, sys
from pagoda.quantization.kernels import cpu_int4_dot
cpu_int4_dot.ENABLED = '$arm' == 'on'
sys.argv = ['spec_decode_cpu_bench.py', '--reps', '1']
runpy.run_path('benchmarks/spec_decode_cpu_bench.py', run_name='__main__')
" > $D/spec_${arm}_$run.txt 2>&1
  echo "$arm $run: $(grep -E '\"(speedup|speedup_cpu_time|identical|tok_s_base|tok_s_spec|mean_acceptance_length|step_ratio)\"' $D/spec_${arm}_$run.txt | tr -s ' ' | tr '\n' ' ')"
done; done
