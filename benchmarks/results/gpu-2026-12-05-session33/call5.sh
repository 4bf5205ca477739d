#!/bin/bash
# Session 33, call 5 (for the next session; no code changed by it): where the FP8-cache kernel's fixed cost a
# request lies. The served bf16 and FP8 kernels at 448 / 512 (whole 64-key tiles only) / 520 / 540 / 576 / 1,024 keys:
# a partial last tile costs what against whole ones?
set -uo pipefail
export CAP=250
source benchmarks/results/gpu-2026-12-05-session33/lib.sh
step keys 180 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs 3000 --served-only --keys 448,512,520,540,576,1024
cat $OUT/keys.txt | tee -a $S
exit 0
