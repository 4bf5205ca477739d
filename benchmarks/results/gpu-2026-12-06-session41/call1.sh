#!/bin/bash
# Session 41, call 1 (carry ["wheels"]): the whole GPU test suite after session 40's engine changes, each file in
# its own pytest process (a CPU-suite habit of leaving engines alive fills the card otherwise); logs packed into
# one archive, the summary a line per file.
set -uo pipefail
export CAP=570
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 240"
mkdir -p /tmp/logs
for f in parity pooling structured spec_verify_graphs spec_no_sync kv_fp8 kv_features memory_release gguf w8a8 \
         int4_kernels fp8_gemv moe deterministic window_softcap qk_norm_rope transformers_fallback pdl jit_precompile \
         tensor_parallel tensor_parallel_graphs pipeline_parallel data_parallel; do
  step gpu_$f 150 $P tests/gpu/test_gpu_$f.py
done
mv $OUT/gpu_*.txt /tmp/logs/ 2>/dev/null; tar czf $OUT/call1_logs.tgz -C /tmp/logs .
cat $S
exit 0
