#!/bin/bash
# Session 44, call 3 (run inline on the warm machine after call 2, from the same /tmp/r copy; kept here as run):
# the decode-graph A/B of UNSPLIT_DECODE_KERNEL at batch 64, then ShareGPT-like throughput (300 prompts) with the
# switch on and off, bf16 and FP8 weights + FP8 KV.
cd /tmp/r && export CAP=430 && source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step decode_ab64 80 python benchmarks/gpu/decode_ab.py $M --switch unsplit-decode --batch 64 --rounds 2
SW="python benchmarks/gpu/with_module_values.py pagoda.attention.triton_kernels.UNSPLIT_DECODE_KERNEL"
for q in bf16 fp8; do for arm in on off; do
  extra=""; [ $q = fp8 ] && extra="--quantization fp8 --kv-cache-dtype fp8"; val=False; [ $arm = on ] && val=True
  step tp_${q}_$arm 90 $SW=$val -- --log-level WARNING $TP $extra
  echo "throughput $q $arm: $(grep -iE 'req/s|requests/s|tok/s' $OUT/tp_${q}_$arm.txt | tail -2 | tr '\n' ' ')" >> $S
done; done; cat $S
