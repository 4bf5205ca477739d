#!/bin/bash
# Session 43, call 1e (carry ["wheels"]): the last device minutes (~4): the sampler's CUDA test, the one-split
# decode test compiled for the GPU, and the UNSPLIT_DECODE_KERNEL kernel sweep (no decode-graph A/B).
set -uo pipefail
export CAP=240
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 100"
step kernels_unsplit 60 $P tests/kernels/test_triton_attention.py -k "large_decode_batch"
step sweep_decode_kernel 90 python benchmarks/gpu/fp8_attention_sweep.py --decode-kernel --bandwidth-gbs 3000 --keys 100,540,2000
step gpu_sampler 60 $P tests/gpu/test_gpu_sampler.py
cat $S
exit 0
