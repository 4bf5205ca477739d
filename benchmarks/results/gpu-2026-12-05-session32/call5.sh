#!/bin/bash
# Session 32, call 5 (same machine as call 4; run as one command line): call 4's best widths end to end (call 4's
# script lost them: its BEST line had no space after BEST), against the committed widths, and the step profile.
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
B="pagoda.layers.fused_kernels.FP8_ROW_ELEMS={'norm':8,'silu':32}"
step tp_fp8_best 90 $WMV "$B" -- --log-level WARNING $TP --quantization fp8 --kv-cache-dtype fp8
step tp_bf16_best 90 $WMV "$B" -- --log-level WARNING $TP
step tp_fp8_def2 90 $CLI $TP --quantization fp8 --kv-cache-dtype fp8
step tp_bf16_def2 90 $CLI $TP
step prof_fp8_best 60 $WMV "$B" -- --script benchmarks/gpu/profile_steps.py $M --batch 256 --steps 10 \
  --engine-args '{"quantization": "fp8", "kv_cache_dtype": "fp8"}'
grep -HE "req/s" $OUT/tp_*.txt; grep -A8 "== batch" $OUT/prof_fp8_best.txt
