#!/bin/bash
# Session 43, call 1d (carry ["wheels"]): call 1c cut again (~6 minutes) after a machine was taken back mid-call:
# the sampler's CUDA test, the one-split decode test compiled for the GPU, the UNSPLIT_DECODE_KERNEL kernel sweep,
# and its decode-graph A/B at batch 256 only.
set -uo pipefail
export CAP=380
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 120"
step gpu_sampler 60 $P tests/gpu/test_gpu_sampler.py
step kernels_unsplit 60 $P tests/kernels/test_triton_attention.py -k "large_decode_batch"
step sweep_decode_kernel 90 python benchmarks/gpu/fp8_attention_sweep.py --decode-kernel --bandwidth-gbs 3000 --keys 100,540,2000
step decode_ab 160 python benchmarks/gpu/decode_ab.py $M --switch unsplit-decode --batch 256 --rounds 2
cat $S
exit 0
