#!/usr/bin/env bash
# Session-7 device call 3: Qwen3-30B-A3B decode with 32-key tiles on short KV splits on then off (issue 13; call 2's
# run stopped at the expert-count spy, which the mixed-step graphs now bypassed); `pagoda serve` start-up with the
# engine core started before the front end's imports vs after (issue 21 item 1); where the core's imports go.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "start-up a/b"
timeout 300 bash benchmarks/gpu/startup_ab.sh 2 > /dev/null 2>&1; cat $OUT/startup.txt >> $S
log "core imports (python -X importtime, warm)"
python -X importtime -c "import pagoda.config, pagoda.engine.core" 2> $OUT/importtime.txt
python -X importtime -c "import pagoda.config, pagoda.engine.core" 2> $OUT/importtime.txt
sort -t'|' -k2 -n $OUT/importtime.txt | tail -25 >> $S
log "moe bench, short split tiles on then off (batch 1)"
timeout 200 python benchmarks/gpu/moe_bench.py --short-split-tiles ab --skip-hf --skip-mixtral --output-json $OUT/moe.json \
  > $OUT/moe_bench.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/moe_bench.txt | tee -a $S
rm -f $OUT/start_warm_*r1.log $OUT/importtime.txt
log done
