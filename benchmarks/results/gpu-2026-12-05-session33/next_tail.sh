#!/bin/bash
# For the next device session (written in session 33, not run): triton_kernels.TAIL_TILE_KEYS (off), the causal tail
# of 16-row tiles walked in 32- or 16-key tiles instead of one 64-key tile (a partial tile costs a whole one: session
# 33 call 5). One call (< 600 s; carry ["wheels"]): the served kernels by context length with the switch off / 32 /
# 16, then ShareGPT-like throughput bf16 and FP8 + FP8 KV with it off and at 32, and FP8 in the old NHD layout (the
# A/B runs key their own manifest). Issue 12's decode steps on an H200: session 32's next.sh, a call of its own.
set -uo pipefail
export CAP=580
source benchmarks/results/gpu-2026-12-05-session33/lib.sh
SW="benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs 3000 --served-only --keys 512,520,540,576,1024"
step keys_off 100 python $SW
for n in 32 16; do
  step keys_$n 100 $WMV "pagoda.attention.triton_kernels.TAIL_TILE_KEYS=$n" -- --script $SW
done
grep -H "us (" $OUT/keys_*.txt | tee -a $S
FP8="--quantization fp8 --kv-cache-dtype fp8"
# shellcheck disable=SC2086
step tp_bf16 80 $CLI $TP
# shellcheck disable=SC2086
step tp_bf16_t32 80 $WMV "pagoda.attention.triton_kernels.TAIL_TILE_KEYS=32" -- --log-level WARNING $TP
# shellcheck disable=SC2086
step tp_fp8 80 $CLI $TP $FP8
# shellcheck disable=SC2086
step tp_fp8_nhd 80 $WMV "pagoda.attention.triton_backend.KV_LAYOUT='NHD'" -- --log-level WARNING $TP $FP8
# shellcheck disable=SC2086
step tp_fp8_t32 80 $WMV "pagoda.attention.triton_kernels.TAIL_TILE_KEYS=32" -- --log-level WARNING $TP $FP8
grep -HE "req/s" $OUT/tp_*.txt | tee -a $S
exit 0
