#!/usr/bin/env bash
# Session-11 device call 1 (issue 21 item 5): programmatic dependent launch (pagoda/layers/pdl.py) for the decode
# chain's Triton kernels (norms, GEMV, rotary + KV write, split-KV decode + reduce, SiLU-mul). The PDL-vs-plain
# bitwise test first, then the touched kernels' tests on the GPU, then the Llama-3-8B-shape decode step A/B
# (decode_ab.py --switch pdl) at batch 1, 4 and 64, two rounds.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "pdl test"
timeout 150 python -m pytest tests/gpu/test_gpu_pdl.py -q -rf -p no:cacheprovider > $OUT/test_pdl.txt 2>&1; tail -25 $OUT/test_pdl.txt | tee -a $S
log "llama3-8b decode a/b, pdl"
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
timeout 280 python benchmarks/gpu/decode_ab.py $M --switch pdl --batch 1 4 64 --rounds 2 \
  > $OUT/decode_ab.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/decode_ab.txt | tee -a $S
log "kernel tests"
timeout 120 python -m pytest tests/kernels/test_dense_gemv.py tests/kernels/test_fused_kernels.py tests/kernels/test_triton_attention.py \
  tests/gpu/test_gpu_qk_norm_rope.py -q -rf -p no:cacheprovider 2>&1 | tail -4 | tee -a $S
log done
