#!/bin/bash
# Session 42, call 1b (carry ["wheels"]): call 1 cut to fit the session's last device minutes: the sampler's CUDA
# test, the attention kernel tests, and the UNSPLIT_DECODE_KERNEL kernel sweep.
set -uo pipefail
export CAP=360
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 200"
step gpu_sampler 60 $P tests/gpu/test_gpu_sampler.py
step sweep_decode_kernel 90 python benchmarks/gpu/fp8_attention_sweep.py --decode-kernel --bandwidth-gbs 3000 --keys 100,540,2000
step kernels_attention 150 $P tests/kernels/test_triton_attention.py
cat $S
exit 0
