#!/usr/bin/env bash
# The default model's latency on an AVX2-only CPU at three points (session 18, 2026-12-04):
#   before: eda95b4 (float32 activations under --dtype auto), mid: bc81e03 (bf16 activations for weight-only int),
#   after: the working tree (plus the AVX2 native int4 kernel), and after with the native kernel for 1-row steps.
# Run from the repo root with the venv active, after: git worktree add /tmp/before eda95b4; git worktree add /tmp/mid bc81e03
set -x
HERE=$PWD
D=$HERE/benchmarks/results/cpu-avx2-dtype-2026-12-04
grep -o 'avx512[a-z_0-9]*\|avx2\|amx[a-z_]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo; uptime
lat() {  # dir out batch-sizes...
  local dir=$1 out=$2; shift 2
  (cd "$dir" && OMP_WAIT_POLICY=PASSIVE timeout 900 python -m pagoda bench latency --model default --batch-size "$@" \
    --input-len 64 --output-len 32 --num-iters 3 > "$D/$out" 2>&1)
  uptime
}
lat "$HERE" after.txt 1 4 16 32
lat /tmp/mid mid.txt 1 4 16 32
lat /tmp/before before.txt 1
(cd "$HERE" && OMP_WAIT_POLICY=PASSIVE python -c "
import sys, runpy, pagoda.quantization.kernels.cpu_int4_native as c
c.MIN_ROWS = 1
sys.argv = ['pagoda', 'bench', 'latency', '--model', 'default', '--batch-size', '1', '--input-len', '64',
            '--output-len', '32', '--num-iters', '3']
runpy.run_module('pagoda', run_name='__main__')" > "$D/after_min_rows_1.txt" 2>&1)
uptime
lat "$HERE" after_again.txt 1 4 16 32
