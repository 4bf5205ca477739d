#!/bin/bash
# Session 32, call 6: the Triton FP8 GEMM against _scaled_mm (fp8_gemm_sweep.py), its GPU tests, then end to end with
# the sweep's table against without: ShareGPT-like throughput FP8 + FP8 KV (and bf16), the batch-256 step profile.
set -uo pipefail
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
step gemm_tests 60 python -m pytest -q -p no:cacheprovider tests/kernels/test_fp8_gemm_triton.py
echo "tests: $(tail -1 $OUT/gemm_tests.txt)" | tee -a $S
step sweep 200 python benchmarks/gpu/fp8_gemm_sweep.py
grep -E "^rows|^    \(|WRONG|Error" $OUT/sweep.txt | tee -a $S
BEST=$(grep '^BEST ' $OUT/sweep.txt | sed 's/^BEST //')
echo "best: $BEST" | tee -a $S
PA='{"quantization": "fp8", "kv_cache_dtype": "fp8"}'
if [ -n "$BEST" ]; then
  # shellcheck disable=SC2086
  step tp_fp8_table 80 $WMV "$BEST" -- --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8
  # shellcheck disable=SC2086
  step tp_fp8_base 80 $CLI $TP --quantization fp8 --kv-cache-dtype fp8
  # shellcheck disable=SC2086
  step tp_bf16 80 $CLI $TP
  step prof_fp8_table 50 $WMV "$BEST" -- --script benchmarks/gpu/profile_steps.py $M --batch 256 --steps 10 \
    --engine-args "$PA"
  # shellcheck disable=SC2086
  step tp_fp8_table_r2 80 $WMV "$BEST" -- --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8
fi
grep -HE "req/s" $OUT/tp_*.txt | tee -a $S
grep -A6 "== batch" $OUT/prof_fp8_table.txt | tee -a $S
exit 0
