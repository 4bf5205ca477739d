#!/usr/bin/env bash
# Session-6 device call 5 (the last ~5 minutes): issue 21 item 3 with --long-prefill-token-threshold (new): 64 streams
# at thresholds 256 and 512, then 256 streams at 256 (call 4 measured 64 streams at the default, no threshold).
set -uo pipefail
export PAGODA_CACHE=$PWD/out/pc
for t in 256 512; do
  SERVE_FLAGS="--long-prefill-token-threshold $t" TAG="_t$t" LEVELS=64 timeout 66 bash benchmarks/gpu/issue21_timeline.sh stream > /dev/null 2>&1
done
SERVE_FLAGS="--long-prefill-token-threshold 256" TAG="_t256" LEVELS=256 timeout 62 bash benchmarks/gpu/issue21_timeline.sh stream > /dev/null 2>&1
rm -f $OUT/core_steps_*.jsonl
grep -vE "^(Successful|Failed|Maximum|Request rate|Total|Prefix|Requests with|=|-)" $OUT/summary.txt
