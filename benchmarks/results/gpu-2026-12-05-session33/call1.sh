#!/bin/bash
# Session 33, call 1: does the KV cache's memory layout explain the FP8-cache attention kernel's 1.52x to its bytes
# floor? (1) fp8_attention_sweep.py --layouts: the served layout against head-major blocks (@hm) and head-major with
# V key-major (@vt, the kernels' new V_T path), 256 one-row requests at 540 and 2,000 keys, bf16 and FP8 caches;
# (2) the layout tests compiled; (3) ShareGPT-like throughput FP8 + FP8 KV with the served layout and the two others.
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-05-session33/lib.sh
step layouts 200 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs 3000 --layouts
cat $OUT/layouts.txt | tee -a $S
step tests 150 python -m pytest -q -x tests/kernels/test_kv_layouts.py tests/kernels/test_kv_fp8_kernels.py \
  tests/kernels/test_pdl_protocol.py
tail -3 $OUT/tests.txt | tee -a $S
FP8="--quantization fp8 --kv-cache-dtype fp8"
for L in NHD_BY_HEAD_VT NHD NHD_BY_HEAD; do
  step tp_fp8_$L 120 $WMV "pagoda.attention.triton_backend.KV_LAYOUT='$L'" -- $TP $FP8
  grep "req/s" $OUT/tp_fp8_$L.txt | tail -1 | sed "s/^/$L: /" | tee -a $S
done
exit 0
