#!/bin/bash
# NOT RUN (session 49: no machine started after call 2; for a later session, carry ["wheels"]): GPU test files after sessions 42-49's engine changes (the engine-core
# lifecycle and spawn changes, this session's structured-output and scheduler fixes), each file in its own pytest
# process (the files the device time left allows); logs packed into one archive, the summary a line per file.
set -uo pipefail
export CAP=480
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 240"
mkdir -p /tmp/logs
for f in parity structured sampler kv_features memory_release spec_verify_graphs spec_no_sync pooling deterministic \
         kv_fp8 int4_kernels gguf pdl w8a8; do
  step gpu_$f 120 $P tests/gpu/test_gpu_$f.py
done
cp $OUT/gpu_*.txt /tmp/logs/ 2>/dev/null; tar czf $OUT/call3_logs.tgz -C /tmp/logs .
cat $S
exit 0
