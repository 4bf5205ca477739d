#!/bin/bash
# Session 32, call 1: GPU tests of the FP8 rows and session 31's 4-bit review mends; ShareGPT-like throughput bf16 /
# FP8 + FP8 KV with the FP8 rows from the norms (on) and without (off); the batch-256 step profiled on and off.
set -uo pipefail
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
step tests 150 python -m pytest -q -p no:cacheprovider tests/kernels/test_fused_kernels.py \
  tests/kernels/test_fp8_quant_kernel.py tests/gpu/test_gpu_w8a8.py tests/gpu/test_gpu_int4_kernels.py \
  tests/kernels/test_int_weight_triton.py
echo "tests: $(tail -1 $OUT/tests.txt)" | tee -a $S
# shellcheck disable=SC2086
step tp_bf16 90 $CLI $TP
# shellcheck disable=SC2086
step tp_fp8_on 90 $CLI $TP --quantization fp8 --kv-cache-dtype fp8
# shellcheck disable=SC2086
step tp_fp8_off 90 $WMV pagoda.models.llama.FP8_ROWS=False -- --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8
grep -HE "req/s|Throughput" $OUT/tp_*.txt | tee -a $S
PA='{"quantization": "fp8", "kv_cache_dtype": "fp8"}'
step prof_fp8_on 60 python benchmarks/gpu/profile_steps.py $M --batch 256 --steps 10 --engine-args "$PA"
step prof_fp8_off 60 $WMV pagoda.models.llama.FP8_ROWS=False -- --script benchmarks/gpu/profile_steps.py $M \
  --batch 256 --steps 10 --engine-args "$PA"
grep -HE "busy|per step" $OUT/prof_*.txt | head -8 | tee -a $S
exit 0
