#!/usr/bin/env bash
# Session-8 device call 4: GGUF models quantized on the GPU (new tests/gpu/test_gpu_gguf.py: the Triton W4A16/W8A16
# kernels at the default model's shapes in fp32 and bf16, with fp32 capped at 2 pipeline stages; a tiny quantized
# GGUF Llama vs its dequantized conversion with CUDA graphs) and the int4 kernel tests beside them. Carries the first
# third of the default model's GGUF again (calls 5 and 6 bring the rest).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env 2>&1 | tail -4 > $OUT/env.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
S=$OUT/summary.txt; cat $OUT/env.txt >> $S; rm $OUT/env.txt
echo "== gguf gpu tests ($(date +%T))" >> $S
timeout 400 python -m pytest tests/gpu/test_gpu_gguf.py tests/gpu/test_gpu_int4_kernels.py -q -rf -p no:cacheprovider \
  > $OUT/tests.txt 2>&1; grep -E "passed|failed|FAILED|Error" $OUT/tests.txt | tail -20 >> $S
echo "== done ($(date +%T))" >> $S
