#!/usr/bin/env bash
# Session-7 device call 4: `pagoda serve` start-up with the tokenizer's config fix and the phase lines (cold once, then
# warm with the early core off/on, twice; issue 21 item 1); 64 and 256 streams with --max-num-batched-tokens 512
# after the API server's per-token cuts (helper apistream; call 2 ran the same flags before them; issue 21 item 3).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "start-up a/b"
COLD=1 timeout 240 bash benchmarks/gpu/startup_ab.sh 2 > /dev/null 2>&1; cat $OUT/startup.txt >> $S
for lv in 64 256; do
  N=500 LEVELS=$lv TAG=_mbt512 SERVE_FLAGS="--max-num-batched-tokens 512" bash benchmarks/gpu/issue21_timeline.sh stream \
    > /dev/null 2>&1
done
rm -f $OUT/core_steps_*.jsonl $OUT/serve_c256_mbt512.log $OUT/start_warm_*r1.log
grep -vE "^(Successful|Failed|Maximum|Request rate|Total|Prefix|Requests with|=|-)" $S > $OUT/s2.txt; mv $OUT/s2.txt $S
gzip -9 $OUT/*.json
