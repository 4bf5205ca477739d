#!/bin/bash
# Session 44, call 1 (session 42's call 1, never run in sessions 42-43) (carry ["wheels"]): the sampler's top-k/top-p mask on CUDA against the CPU (stable sort), the
# attention kernels compiled for the GPU with the decode kernel's one-split path (UNSPLIT_DECODE_KERNEL), then its A/B:
# the kernels alone (256 decode rows, bf16 and FP8 caches) and the decode graph at batches 64 and 256.
set -uo pipefail
export CAP=570
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 200"
step gpu_sampler 60 $P tests/gpu/test_gpu_sampler.py
step kernels_attention 150 $P tests/kernels/test_triton_attention.py tests/kernels/test_kv_fp8_kernels.py
step sweep_decode_kernel 90 python benchmarks/gpu/fp8_attention_sweep.py --decode-kernel --bandwidth-gbs 3000 --keys 100,540,2000
step decode_ab 240 python benchmarks/gpu/decode_ab.py $M --switch unsplit-decode --batch 64 256 --rounds 2
cat $S
exit 0
