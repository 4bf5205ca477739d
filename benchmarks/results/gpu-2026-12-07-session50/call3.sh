#!/bin/bash
# NOT RUN (session 50: no machine started after call 1; for a later session, carry ["wheels"], e.g. CAP=570): the
# gated store's GPU test, then the one-row gate_up GEMV storing silu(gate)*up itself (triton_wna16.GATED_STORE, off by
# default until this runs) against the GEMV then silu_and_mul, W4A16 (GPTQ layout, dummy weights) batch-1 decode step,
# on/off twice with bf16 between for the ratio; then the GPU test files call 1 failed (missing wheels) or skipped.
set -uo pipefail
export CAP=${CAP:-300}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
L1="bench latency --model $M --load-format dummy --batch-size 1 --input-len 512 --output-len 32"
WM="python benchmarks/gpu/with_module_values.py pagoda.quantization.kernels.triton_wna16.GATED_STORE"
ab() {  # $1 True/False, $2 round
  # shellcheck disable=SC2086
  step ab_${1}_$2 75 $WM=$1 -- --log-level WARNING $L1 --quantization gptq
  echo "gated $1 round $2: $(grep -E '^batch' $OUT/ab_${1}_$2.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//')" >> $S
}
P="python -m pytest -q -p no:cacheprovider --timeout 200"
step gpu_gated 60 $P tests/gpu/test_gpu_int4_kernels.py -k gated
ab True 1; ab False 1
# shellcheck disable=SC2086
step lat_bf16 70 $CLI $L1
echo "bf16: $(grep -E '^batch' $OUT/lat_bf16.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//')" >> $S
ab True 2; ab False 2
for f in int4_kernels structured spec_verify_graphs gguf pdl w8a8; do
  step gpu_$f 110 $P tests/gpu/test_gpu_$f.py
done
mkdir -p /tmp/logs; cp $OUT/gpu_*.txt $OUT/ab_*.txt $OUT/lat_*.txt /tmp/logs/ 2>/dev/null
tar czf $OUT/logs.tgz -C /tmp/logs . && rm -f $OUT/gpu_*.txt $OUT/ab_*.txt $OUT/lat_*.txt
cat $S
exit 0
