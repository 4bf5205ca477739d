#!/usr/bin/env bash
# The native bf16 LM head (AVX2 CPUs) A/B: k = f8210b7 (the AVX2 int4 kernel, torch's bf16 matmul for the head)
# against the working tree (plus cpu_bf16_head), alternating, two rounds. Repo root, venv active, after
# git worktree add /tmp/k f8210b7.
set -x
HERE=$PWD
D=$HERE/benchmarks/results/cpu-avx2-dtype-2026-12-04
lat() {
  local dir=$1 out=$2
  (cd "$dir" && OMP_WAIT_POLICY=PASSIVE timeout 900 python -m pagoda bench latency --model default --batch-size 1 4 16 32 \
    --input-len 64 --output-len 32 --num-iters 3 > "$D/$out" 2>&1)
  uptime
}
for r in 1 2; do
  lat /tmp/k "k_r$r.txt"
  lat "$HERE" "head_r$r.txt"
done
