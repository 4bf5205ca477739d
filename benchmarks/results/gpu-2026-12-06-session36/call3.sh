#!/bin/bash
# Session 36, call 3 (H100): the committed one-row tables (lift / column blocks on by default) through the GPU tests
# of the 4-bit kernels and a GGUF model quantized on the GPU, then the decode steps bf16 / W4A16 / FP8.
set -uo pipefail
export CAP=300
source benchmarks/results/gpu-2026-12-06-session36/lib.sh
step tests 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_gguf.py tests/gpu/test_gpu_int4_kernels.py \
  tests/kernels/test_w4_gemv_triton.py
echo "tests: $(tail -1 $OUT/tests.txt)" | tee -a $S
for q in none gptq; do
  extra=""; [ $q = none ] || extra="--quantization $q"
  # shellcheck disable=SC2086
  step lat_$q 60 $CLI $LAT $extra
  echo "latency $q: $(grep -E '^batch' $OUT/lat_$q.txt | sed 's/, in 512.*median/ median/; s/ (p90.*//' | tr '\n' ' ')" | tee -a $S
done
exit 0
