#!/bin/bash
# Call 2: the GPU tests again (call 1 lacked xgrammar's apache-tvm-ffi), ShareGPT-like throughput bf16 and FP8 + FP8 KV (FP8 rows on and off, each keying its own Triton manifest),
# then issue 17's verify-4 step (session 32's next.sh, second half).
set -uo pipefail
export CAP=580
source benchmarks/results/gpu-2026-12-05-session34/lib.sh
step tests 120 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_spec_verify_graphs.py \
  tests/gpu/test_gpu_spec_no_sync.py
tail -3 $OUT/tests.txt | tee -a $S
# shellcheck disable=SC2086
step tp_bf16 90 $CLI $TP
# shellcheck disable=SC2086
step tp_fp8_on 90 $CLI $TP --quantization fp8 --kv-cache-dtype fp8
# shellcheck disable=SC2086
step tp_fp8_off 90 $WMV pagoda.models.llama.FP8_ROWS=False -- --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8
grep -HE "req/s" $OUT/tp_*.txt | tee -a $S
step spec_verify 170 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec
tail -2 $OUT/spec_verify.txt | tee -a $S
exit 0
