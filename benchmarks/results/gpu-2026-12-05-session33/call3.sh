#!/bin/bash
# Session 33, call 3: the new defaults (Triton KV layout NHD_BY_HEAD; FP8_ROW_TILES: 16-row tiles over an FP8 cache
# walk 32 keys on 2 warps) under the GPU tests, then ShareGPT-like throughput bf16 / FP8 + FP8 KV, and FP8 with the
# row-tile rule off (A/B).
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-05-session33/lib.sh
step tests 230 python -m pytest -q -x tests/kernels/test_kv_layouts.py tests/kernels/test_kv_fp8_kernels.py \
  tests/gpu/test_gpu_kv_fp8.py tests/gpu/test_gpu_kv_features.py tests/gpu/test_gpu_parity.py \
  tests/gpu/test_gpu_deterministic.py
tail -4 $OUT/tests.txt | tee -a $S
FP8="--quantization fp8 --kv-cache-dtype fp8"
step tp_bf16 90 $CLI $TP
step tp_fp8 90 $CLI $TP $FP8
step tp_fp8_tiles_off 90 $WMV "pagoda.attention.triton_kernels.FP8_ROW_TILES=None" -- --log-level WARNING $TP $FP8
for f in tp_bf16 tp_fp8 tp_fp8_tiles_off; do echo "$f: $(grep 'req/s' $OUT/$f.txt | tail -1)" | tee -a $S; done
exit 0
