#!/bin/bash
# Session 43, call 1c (carry ["wheels"]): call 1 cut to ~8 minutes of device time, for what is left after refused
# starts: the sampler's CUDA test, the decode-kernel tests compiled for the GPU (the one-split DIRECT path included),
# the UNSPLIT_DECODE_KERNEL kernel sweep and its decode-graph A/B at batches 64 and 256.
set -uo pipefail
export CAP=500
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 200"
step gpu_sampler 60 $P tests/gpu/test_gpu_sampler.py
step kernels_decode 100 $P tests/kernels/test_triton_attention.py -k "split_kv_decode or large_decode_batch or unified_half"
step sweep_decode_kernel 90 python benchmarks/gpu/fp8_attention_sweep.py --decode-kernel --bandwidth-gbs 3000 --keys 100,540,2000
step decode_ab 240 python benchmarks/gpu/decode_ab.py $M --switch unsplit-decode --batch 64 256 --rounds 2
cat $S
exit 0
