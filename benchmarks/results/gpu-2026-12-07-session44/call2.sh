#!/bin/bash
# Session 44, call 2 (carry ["wheels"]; run from a `git archive HEAD` copy, so helpers' unfinished edits stay out):
# the new LoRA GPU test, the sampler's CUDA test, the one-split decode kernel's test and its kernel sweep, then the
# decode-graph A/B of UNSPLIT_DECODE_KERNEL at batch 256 if time is left. A shorter cut of call 1 for a tight budget.
set -uo pipefail
export CAP=${CAP:-420}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 100"
step gpu_lora 90 $P tests/gpu/test_gpu_lora.py
step gpu_sampler 60 $P tests/gpu/test_gpu_sampler.py
step kernels_unsplit 60 $P tests/kernels/test_triton_attention.py -k "large_decode_batch"
step sweep_decode_kernel 90 python benchmarks/gpu/fp8_attention_sweep.py --decode-kernel --bandwidth-gbs 3000 --keys 100,540,2000
step decode_ab 150 python benchmarks/gpu/decode_ab.py $M --switch unsplit-decode --batch 256 --rounds 2
cat $S
exit 0
