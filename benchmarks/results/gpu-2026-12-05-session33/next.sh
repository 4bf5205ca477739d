#!/bin/bash
# For the next device session (sessions 32 and 33 ran on H100s only): the code of session 33 on an H200, where
# issue 12's and 17's targets were first measured; replaces session 32's next.sh. One call (< 600 s; carry
# ["wheels"]): issue 12's decode steps (bf16 / W4A16 / FP8 at batch 1, 2, 64), ShareGPT-like throughput bf16 and
# FP8 + FP8 KV, the FP8 run again in the old NHD layout (an A/B with its own manifest), and the FP8-cache kernel by
# context length. Run from the repository root: bash <this file>.
set -uo pipefail
export CAP=580
source benchmarks/results/gpu-2026-12-05-session33/lib.sh
for q in none gptq fp8; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  step lat_$q 85 $CLI $LAT $extra
  echo "latency $q: $(grep -E '^batch' $OUT/lat_$q.txt | tr '\n' ' ')" | tee -a $S
done
FP8="--quantization fp8 --kv-cache-dtype fp8"
# shellcheck disable=SC2086
step tp_bf16 80 $CLI $TP
# shellcheck disable=SC2086
step tp_fp8 80 $CLI $TP $FP8
# shellcheck disable=SC2086
step tp_fp8_nhd 80 $WMV "pagoda.attention.triton_backend.KV_LAYOUT='NHD'" -- --log-level WARNING $TP $FP8
grep -HE "req/s" $OUT/tp_*.txt | tee -a $S
step keys 120 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs 4260 --served-only --keys 448,512,540,1024
cat $OUT/keys.txt | tee -a $S
exit 0
