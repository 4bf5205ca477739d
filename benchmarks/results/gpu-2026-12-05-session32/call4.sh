#!/bin/bash
# Session 32, call 4: the row-holding kernels' widths (fp8_rows_sweep.py), then ShareGPT-like throughput bf16 and
# FP8 + FP8 KV with the committed widths and with the sweep's best (the norm's width serves bf16 too).
set -uo pipefail
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
step sweep 120 python benchmarks/gpu/fp8_rows_sweep.py
cat $OUT/sweep.txt | tee -a $S
BEST=$(grep '^BEST ' $OUT/sweep.txt | sed 's/^BEST //')
echo "best: $BEST" | tee -a $S
# shellcheck disable=SC2086
step tp_fp8_def 90 $CLI $TP --quantization fp8 --kv-cache-dtype fp8
# shellcheck disable=SC2086
[ -n "$BEST" ] && step tp_fp8_best 90 $WMV "$BEST" -- --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8
# shellcheck disable=SC2086
step tp_bf16_def 90 $CLI $TP
# shellcheck disable=SC2086
[ -n "$BEST" ] && step tp_bf16_best 90 $WMV "$BEST" -- --log-level WARNING $TP
grep -HE "req/s" $OUT/tp_*.txt | tee -a $S
exit 0
