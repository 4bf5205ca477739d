#!/usr/bin/env bash
# Session-11 device call 2 (issue 21 item 5): call 1 measured PDL at batch 1 4.198 -> 4.083 ms (1.164x floor). Here
# two more cuts, each A/B on the Llama-3-8B-shape decode step (decode_ab.py, batch 1/4/64, two rounds): the SiLU-and-mul
# inside the down projection's GEMV (one launch fewer per layer) and a two-launch Triton argmax of the logits (torch's
# ran 36 us at batch 1 in session 3's profile). Then the step's kernels with PDL off and on (profile_decode.py,
# ~1k context), then the GPU tests these touch.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
for sw in silu-mul-gemv argmax; do
  log "llama3-8b decode a/b, $sw"
  timeout 150 python benchmarks/gpu/decode_ab.py $M --switch $sw --batch 1 4 64 --rounds 2 \
    > $OUT/decode_ab_$sw.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/decode_ab_$sw.txt | tee -a $S
done
for p in 0 1; do
  log "profile, PAGODA_PDL=$p"
  PAGODA_PDL=$p timeout 100 python benchmarks/gpu/profile_decode.py $M 1 > $OUT/profile_pdl$p.txt 2>&1
  grep -A16 "^== batch" $OUT/profile_pdl$p.txt | tee -a $S
done
log "tests"
timeout 230 python -m pytest tests/gpu/test_gpu_pdl.py tests/kernels/test_argmax.py tests/kernels/test_dense_gemv.py \
  tests/gpu/test_gpu_parity.py tests/gpu/test_gpu_spec_verify_graphs.py tests/gpu/test_gpu_kv_features.py \
  -q -rf -p no:cacheprovider --timeout 200 > $OUT/tests.txt 2>&1; tail -15 $OUT/tests.txt | tee -a $S
log done
