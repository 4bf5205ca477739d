#!/bin/bash
# Session 49, call 3 (carry ["wheels"]): the GPU test files after sessions 42-48's engine changes (unsplit decode
# kernel, LoRA, the swapped 4-bit dot, the engine-core lifecycle and spawn changes), each file in its own pytest
# process; logs packed into one archive, the summary a line per file.
set -uo pipefail
export CAP=570
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 240"
mkdir -p /tmp/logs
for f in parity sampler kv_features memory_release spec_verify_graphs spec_no_sync structured pooling deterministic \
         pdl jit_precompile kv_fp8 gguf int4_kernels w8a8 fp8_gemv window_softcap qk_norm_rope transformers_fallback moe; do
  step gpu_$f 150 $P tests/gpu/test_gpu_$f.py
done
cp $OUT/gpu_*.txt /tmp/logs/ 2>/dev/null; tar czf $OUT/call3_logs.tgz -C /tmp/logs .
cat $S
exit 0
