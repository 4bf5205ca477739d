#!/usr/bin/env bash
# Session-7 device call 5 (call 4 again without the tokenizer change it reverted: every server of call 4 failed to load
# its tokenizer): 256 and 64 streams with --max-num-batched-tokens 512 after the API server's per-token cuts (issue 21
# item 3; call 2 ran the same flags before them); `pagoda serve` start-up cold once, then warm with the early core
# off and on (issue 21 item 1).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
S=$OUT/summary.txt
for lv in 256 64; do
  N=500 LEVELS=$lv TAG=_mbt512 SERVE_FLAGS="--max-num-batched-tokens 512" bash benchmarks/gpu/issue21_timeline.sh stream \
    > /dev/null 2>&1
done
echo "== start-up a/b ($(date +%T))" >> $S
COLD=1 timeout 150 bash benchmarks/gpu/startup_ab.sh 1 > /dev/null 2>&1; cat $OUT/startup.txt >> $S
rm -f $OUT/core_steps_*.jsonl $OUT/serve_c256_mbt512.log $OUT/start_warm_off_r1.log
grep -vE "^(Successful|Maximum|Request rate|Total|Prefix|Requests with|=|-)" $S > $OUT/s2.txt; mv $OUT/s2.txt $S
gzip -9 $OUT/serve_*.json
