#!/usr/bin/env bash
# Session-11 device call 3 (issue 21 item 5): call 2 measured the SiLU-and-mul inside the down GEMV slower at batch 1
# (4.051 -> 4.162 ms; dropped) and the Triton argmax faster (b1 -0.6 %, b4 -3.8 %; kept). Here two PDL variants, each
# A/B on the Llama-3-8B-shape decode step: where a program lets the next kernel launch (after its own wait instead of
# at its start: less run-ahead, fewer idle CTAs holding SM slots) and four weight tiles loaded ahead of a one-row GEMV's
# wait instead of one. Then PDL on/off again with everything else at its default, and the GPU tests.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
for sw in pdl-trigger-after-wait gemv-prefetch-4 pdl; do
  log "llama3-8b decode a/b, $sw"
  timeout 150 python benchmarks/gpu/decode_ab.py $M --switch $sw --batch 1 4 64 --rounds 2 \
    > $OUT/decode_ab_$sw.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/decode_ab_$sw.txt | grep -v "r[01]\]" | tee -a $S
done
log "tests"
timeout 200 python -m pytest tests/gpu/test_gpu_pdl.py tests/kernels/test_argmax.py tests/kernels/test_dense_gemv.py \
  tests/gpu/test_gpu_parity.py -q -rf -p no:cacheprovider --timeout 200 > $OUT/tests.txt 2>&1; tail -8 $OUT/tests.txt | tee -a $S
log done
