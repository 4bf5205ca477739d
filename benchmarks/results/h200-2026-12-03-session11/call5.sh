#!/usr/bin/env bash
# Session-11 device call 5 (issue 12): PDL in the FP8 and W4 GEMV kernels too (their first weight tiles read before the
# wait). Batch-1 and batch-64 decode steps of the Llama-3-8B shape unquantized, FP8 and GPTQ-4bit (dummy weights), each
# with PAGODA_PDL=1 then 0 in the same call (targets: FP8 b1 <= 0.65x bf16, W4A16 b1 <= 0.45x); then the GPU tests of
# those kernels.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
for p in 1 0; do
  for q in none fp8 gptq; do
    log "latency quantization $q, PAGODA_PDL=$p"
    qflag=(); [ "$q" != none ] && qflag=(--quantization "$q")
    PAGODA_PDL=$p timeout 100 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy \
      "${qflag[@]}" --batch-size 1 64 --input-len 512 --output-len 32 --num-iters 1 --max-model-len 4096 \
      --output-json "$OUT/lat_${q}_pdl$p.json" > $OUT/lat_${q}_pdl$p.log 2>&1; grep -E "^batch|rror" $OUT/lat_${q}_pdl$p.log | tee -a $S
  done
done
log "tests"
timeout 150 python -m pytest tests/gpu/test_gpu_fp8_gemv.py tests/gpu/test_gpu_int4_kernels.py tests/gpu/test_gpu_w8a8.py \
  tests/kernels/test_fp8_gemv_kernel.py tests/kernels/test_w4_gemv_triton.py -q -rf -p no:cacheprovider --timeout 140 \
  > $OUT/tests.txt 2>&1; tail -6 $OUT/tests.txt | tee -a $S
log done
