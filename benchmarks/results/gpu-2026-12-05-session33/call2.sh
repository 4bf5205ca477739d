#!/bin/bash
# Session 33, call 2: (1) fp8_attention_sweep.py --warps: programs of 1 and 2 warps against the served 4 (fewer
# cross-warp softmax reductions; the FP8 cache's kernel at 1.51x its bytes floor in call 1); (2) ShareGPT-like
# throughput in the NHD and NHD_BY_HEAD layouts (call 1's FP8 runs after the first took its manifest and compiled
# in the timed run; the A/B switch now keys its own manifest), bf16 and FP8 + FP8 KV.
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-05-session33/lib.sh
step warps 150 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs 3000 --warps
cat $OUT/warps.txt | tee -a $S
FP8="--quantization fp8 --kv-cache-dtype fp8"
step tp_bf16_NHD 90 $CLI $TP
step tp_fp8_NHD 90 $CLI $TP $FP8
step tp_fp8_BY_HEAD 90 $WMV "pagoda.attention.triton_backend.KV_LAYOUT='NHD_BY_HEAD'" -- $TP $FP8
step tp_bf16_BY_HEAD 90 $WMV "pagoda.attention.triton_backend.KV_LAYOUT='NHD_BY_HEAD'" -- $TP
for f in tp_bf16_NHD tp_fp8_NHD tp_fp8_BY_HEAD tp_bf16_BY_HEAD; do
  echo "$f: $(grep 'req/s' $OUT/$f.txt | tail -1) | $(grep -o 'Engine built.*' $OUT/$f.txt)" | tee -a $S
done
exit 0
