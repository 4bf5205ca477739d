#!/bin/bash
# Session 32, call 7: call 6 again with each K tile's FP8 dot added in float32 (call 6: every rule off by ~1e-3 of
# the row at K = 4,096, the MMA's own accumulator carried through K), a short grid at 256 and 512 rows.
set -uo pipefail
export CAP=430
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
step gemm_tests 60 python -m pytest -q -p no:cacheprovider tests/kernels/test_fp8_gemm_triton.py
echo "tests: $(tail -1 $OUT/gemm_tests.txt)" | tee -a $S
step sweep 150 python benchmarks/gpu/fp8_gemm_sweep.py --quick --rows 256 512
grep -E "^rows|^    \(|WRONG|Error" $OUT/sweep.txt | head -40 | tee -a $S
BEST=$(grep '^BEST ' $OUT/sweep.txt | sed 's/^BEST //')
echo "best: $BEST" | tee -a $S
if [ -n "$BEST" ] && [ "${BEST: -2}" != "{}" ]; then
  # shellcheck disable=SC2086
  step tp_fp8_table 70 $WMV "$BEST" -- --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8
  # shellcheck disable=SC2086
  step tp_fp8_base 70 $CLI $TP --quantization fp8 --kv-cache-dtype fp8
  # shellcheck disable=SC2086
  step tp_fp8_table_r2 70 $WMV "$BEST" -- --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8
fi
grep -HE "req/s" $OUT/tp_*.txt | tee -a $S
exit 0
