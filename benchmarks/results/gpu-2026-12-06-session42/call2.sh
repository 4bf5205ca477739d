#!/bin/bash
# Session 42, call 2 (carry ["wheels"]): the GPU tests of this session's quantization, pooling, speculative and
# engine changes (each file in its own pytest process), then ShareGPT-like throughput with UNSPLIT_DECODE_KERNEL on
# and off (both through with_module_values.py), bf16 and FP8 + FP8 KV, alternating.
set -uo pipefail
export CAP=580
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 150"
for f in parity gguf w8a8 int4_kernels pooling spec_verify_graphs spec_no_sync kv_fp8 structured; do
  step gpu_$f 120 $P tests/gpu/test_gpu_$f.py
done
SW="python benchmarks/gpu/with_module_values.py pagoda.attention.triton_kernels.UNSPLIT_DECODE_KERNEL"
for q in bf16 fp8; do
  for arm in on off; do
    extra=""; [ $q = fp8 ] && extra="--quantization fp8 --kv-cache-dtype fp8"
    val=False; [ $arm = on ] && val=True
    # shellcheck disable=SC2086
    step tp_${q}_$arm 100 $SW=$val -- --log-level WARNING $TP $extra
    echo "throughput $q $arm: $(grep -iE 'req/s|requests/s' $OUT/tp_${q}_$arm.txt | tail -1)" >> $S
  done
done
cat $S
exit 0
