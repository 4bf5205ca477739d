#!/bin/bash
# Session 50, call 1: session 49's unrun GPU test files (next_call.sh: the engine changes of sessions 42-49), each
# file in its own pytest process, then where the W4A16 batch-1 step goes by kernel (PDL off: each kernel's own
# time) and its device timeline with PDL as served (the gaps between launches). Carry ["wheels"].
set -uo pipefail
export CAP=570
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 200"
for f in parity structured sampler kv_features memory_release spec_verify_graphs spec_no_sync pooling deterministic \
         kv_fp8 int4_kernels gguf pdl w8a8; do
  step gpu_$f 110 $P tests/gpu/test_gpu_$f.py
done
GQ='{"quantization": "gptq"}'
step prof_w4_nopdl 90 env PAGODA_PDL=0 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --by-grid --engine-args "$GQ"
step prof_w4_timeline 90 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --timeline --engine-args "$GQ"
mkdir -p /tmp/logs; cp $OUT/gpu_*.txt /tmp/logs/ 2>/dev/null; tar czf $OUT/tests_logs.tgz -C /tmp/logs . && rm -f $OUT/gpu_*.txt
cat $S
exit 0
