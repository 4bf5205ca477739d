#!/usr/bin/env bash
# Session-6 device call 3: the split-KV decode's reduce fused into its launch (issue 21 item 5) with the GEMV table in
# code: GPU tests; A/B of the fused reduce and whole-model figures (Qwen3-30B-A3B batch 1/64, Llama-3-8B batch 1/4);
# the verify-4 step's regression (1.32x -> 1.47x at batch 32 in call 2) located: spec_verify_bench on session 4's
# code (4a602a7, out/old4a602a7.tgz) and on this tree, same call.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "tests"
timeout 60 python -m pytest tests/kernels/test_triton_attention.py -k "split_kv or fused_reduce or locks" tests/kernels/test_dense_gemv.py \
  -q -rf -p no:cacheprovider 2>&1 | tail -3 | tee -a $S
log "moe bench (fused reduce + gemv table in code)"
timeout 90 python benchmarks/gpu/moe_bench.py --skip-hf --skip-mixtral --output-json $OUT/moe.json > $OUT/moe_bench.txt 2>&1
grep -E "^\[|copy bandwidth|rror" $OUT/moe_bench.txt | tee -a $S
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
log "llama3-8b a/b fused reduce"
timeout 120 python benchmarks/gpu/decode_ab.py $M --switch fused-reduce --batch 1 4 --rounds 1 2>&1 | grep -E "^\[|rror" | tee -a $S
log "llama3-8b a/b dense gemv"
timeout 120 python benchmarks/gpu/decode_ab.py $M --switch dense-gemv --batch 1 4 --rounds 1 2>&1 | grep -E "^\[|rror" | tee -a $S
log "spec verify, this tree"
timeout 150 bash benchmarks/gpu/spec_verify_bench.sh /tmp/spec_new 2>&1 | tail -2 | tee -a $S
log "spec verify, session 4 code (4a602a7)"
mkdir -p /tmp/old && tar xzf out/old4a602a7.tgz -C /tmp/old
(cd /tmp/old && PYTHONPATH="/tmp/old:/tmp/site" PAGODA_CACHE=/tmp/old/pc timeout 150 bash benchmarks/gpu/spec_verify_bench.sh /tmp/spec_old 2>&1 | tail -2) | tee -a $S
log "spec verify, this tree again"
timeout 150 bash benchmarks/gpu/spec_verify_bench.sh /tmp/spec_new2 2>&1 | tail -2 | tee -a $S
for d in spec_new spec_old spec_new2; do cp /tmp/$d/verify4.json $OUT/${d}_verify4.json; done
log done
