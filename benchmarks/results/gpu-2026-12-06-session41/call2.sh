#!/bin/bash
# Session 41, call 2 (same warm machine as call 1, carry ["wheels"]): the GPU test files call 1 had no time for, the
# MoE file with a longer limit (call 1 stopped it at 150 s while it was still passing).
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 240"
mkdir -p /tmp/logs2
for f in deterministic window_softcap qk_norm_rope transformers_fallback pdl jit_precompile \
         tensor_parallel tensor_parallel_graphs pipeline_parallel data_parallel; do
  step gpu_$f 120 $P tests/gpu/test_gpu_$f.py
done
step gpu_moe 280 $P tests/gpu/test_gpu_moe.py
mv $OUT/gpu_*.txt /tmp/logs2/ 2>/dev/null; tar czf $OUT/call2_logs.tgz -C /tmp/logs2 .
cat $S
exit 0
