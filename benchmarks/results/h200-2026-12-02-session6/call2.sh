#!/usr/bin/env bash
# Session-6 device call 2: the bf16 GEMV for few-row linears (issues 13 and 21 item 5): its GPU tests, the sweep
# against cuBLAS, then whole-model decode A/B with the sweep's winners as the table (Qwen3-30B-A3B batch 1 and 64;
# Llama-3-8B shape batch 1 and 4); the speculative verify-4 step vs the decode step (issue 17).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "gemv tests"
timeout 60 python -m pytest tests/kernels/test_dense_gemv.py -q -rf -p no:cacheprovider 2>&1 | tail -3 | tee -a $S
log "gemv sweep"
timeout 200 python benchmarks/gpu/dense_gemv_sweep.py --json $OUT/gemv.json 2>&1 | tee -a $S
log "moe bench, dense gemv on then off (batch 1)"
timeout 150 python benchmarks/gpu/moe_bench.py --dense-gemv ab --gemv-table $OUT/gemv.json --skip-hf --skip-mixtral \
  --output-json $OUT/moe.json > $OUT/moe_bench.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/moe_bench.txt | tee -a $S
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
log "llama3-8b decode a/b, dense gemv"
timeout 150 python benchmarks/gpu/decode_ab.py $M --switch dense-gemv --gemv-table $OUT/gemv.json --batch 1 4 --rounds 1 \
  > $OUT/decode_ab.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/decode_ab.txt | tee -a $S
log "spec verify"
timeout 200 bash benchmarks/gpu/spec_verify_bench.sh /tmp/spec 2>&1 | tail -8 | tee -a $S
cp /tmp/spec/plain.json $OUT/spec_plain.json; cp /tmp/spec/verify4.json $OUT/spec_verify4.json
log done
