#!/usr/bin/env bash
# Session-7 device call 2: 32-key tiles for short KV splits in the split-KV decode kernel (from call 1's sweep): the
# attention kernel tests, Qwen3-30B-A3B decode at batch 1 and 64 with the rule on then off (issue 13), Llama-3-8B shape
# decode A/B at batch 1 and 4 (issue 21 item 5); then 64 and 256 streams with --max-num-batched-tokens 512 (every
# mixed step within the mixed-step graphs' 512 tokens; issue 21 item 3).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "attention kernel tests"
timeout 120 python -m pytest tests/kernels/test_triton_attention.py -q -rf -p no:cacheprovider 2>&1 | tail -3 | tee -a $S
log "moe bench, short split tiles on then off (batch 1)"
timeout 200 python benchmarks/gpu/moe_bench.py --short-split-tiles ab --skip-hf --skip-mixtral --output-json $OUT/moe.json \
  > $OUT/moe_bench.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/moe_bench.txt | tee -a $S
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
log "llama3-8b decode a/b, short split tiles"
timeout 150 python benchmarks/gpu/decode_ab.py $M --switch short-split-tiles --batch 1 4 --rounds 1 \
  > $OUT/decode_ab.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/decode_ab.txt | tee -a $S
for lv in 64 256; do
  N=500 LEVELS=$lv TAG=_mbt512 SERVE_FLAGS="--max-num-batched-tokens 512" bash benchmarks/gpu/issue21_timeline.sh stream \
    > /dev/null 2>&1
done
rm -f $OUT/core_steps_*.jsonl $OUT/serve_c256_mbt512.log
grep -vE "^(Successful|Failed|Maximum|Request rate|Total|Prefix|Requests with|=|-)" $S > $OUT/s2.txt; mv $OUT/s2.txt $S
