#!/bin/bash
# Session 51 (carry ["wheels"], e.g. CAP=570): the two unmeasured switches of the one-row 4-bit GEMV, W4A16 (GPTQ layout,
# dummy weights) batch-1 decode step, end to end:
#   triton_wna16.GATED_STORE   (session 50: gate_up stores silu(gate)*up itself; off until timed)
#   triton_w4_gemv.SPLIT_SUM_LOADS (session 51: the split-K tail loads 16 partials a round instead of 8: one L2 round
#                                   trip fewer on qkv, o and down; same bits)
# base (both off) against both on, alternating with bf16 between, then each alone for attribution, then the GPU test
# files session 50's call 3 left (each its own pytest process). Steps past CAP are skipped (lib.sh), in this order.
set -uo pipefail
export CAP=${CAP:-300}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
L1="bench latency --model $M --load-format dummy --batch-size 1 --input-len 512 --output-len 32"
G=pagoda.quantization.kernels.triton_wna16.GATED_STORE
L=pagoda.quantization.kernels.triton_w4_gemv.SPLIT_SUM_LOADS
arm() {  # $1 name, $2 gated, $3 loads
  # shellcheck disable=SC2086
  step ab_$1 75 python benchmarks/gpu/with_module_values.py $G=$2 $L=$3 -- --log-level WARNING $L1 --quantization gptq
  echo "$1 (gated $2, sum loads $3): $(grep -E '^batch' $OUT/ab_$1.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//')" >> $S
}
P="python -m pytest -q -p no:cacheprovider --timeout 200"
step gpu_gated 60 $P tests/gpu/test_gpu_int4_kernels.py -k gated
arm base_1 False 8; arm both_1 True 16
# shellcheck disable=SC2086
step lat_bf16 70 $CLI $L1
echo "bf16: $(grep -E '^batch' $OUT/lat_bf16.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//')" >> $S
arm both_2 True 16; arm base_2 False 8
arm gated_only True 8; arm loads_only False 16
for f in int4_kernels structured spec_verify_graphs gguf pdl w8a8; do
  step gpu_$f 110 $P tests/gpu/test_gpu_$f.py
done
mkdir -p /tmp/logs; cp $OUT/gpu_*.txt $OUT/ab_*.txt $OUT/lat_*.txt /tmp/logs/ 2>/dev/null
tar czf $OUT/logs.tgz -C /tmp/logs . && rm -f $OUT/gpu_*.txt $OUT/ab_*.txt $OUT/lat_*.txt
cat $S
exit 0
