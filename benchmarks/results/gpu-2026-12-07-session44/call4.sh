#!/bin/bash
# Session 44, call 4 (inline on the warm machine, as run): the GPU tests of sessions 42-44's changes, each file in
# its own pytest process, then ShareGPT-like throughput at 1,000 prompts with UNSPLIT_DECODE_KERNEL on, off, on, off
# (the second pair was skipped: the call's cap was reached).
cd /tmp/r && export CAP=470 && source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 120"
for f in parity pooling spec_verify_graphs structured kv_fp8 w8a8 gguf int4_kernels spec_no_sync; do
  step gpu_$f 100 $P tests/gpu/test_gpu_$f.py; done
SW="python benchmarks/gpu/with_module_values.py pagoda.attention.triton_kernels.UNSPLIT_DECODE_KERNEL"
TP1="bench throughput --model $M --load-format dummy --dataset sharegpt --num-prompts 1000"
for arm in on off on off; do val=False; [ $arm = on ] && val=True
  step tpk_$arm 60 $SW=$val -- --log-level WARNING $TP1
  echo "tp1000 bf16 $arm: $(grep -iE 'req/s' $OUT/tpk_$arm.txt | tail -1)" >> $S; done; cat $S
