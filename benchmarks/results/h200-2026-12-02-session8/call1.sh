#!/usr/bin/env bash
# Session-8 device call 1 (issue 21): start-up after the tokenizer-class cache and the early hand-over of the engine
# arguments (cold once per arm, then warm: early core off, on, and session 7's code from out/old as the same-run
# baseline, 2 rounds); then 256 and 64 streams with --max-num-batched-tokens 512, the load generator now in 4
# processes (--num-client-processes 4) and uvloop/httptools in the wheels.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env 2>&1 | tail -4 > $OUT/env.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt; cat $OUT/env.txt >> $S; rm $OUT/env.txt
python -c "import uvloop, httptools; print('uvloop', uvloop.__version__)" >> $S 2>&1
echo "== start-up ($(date +%T))" >> $S
COLD="1 0" BASE_SRC=$PWD/out/old timeout 280 bash benchmarks/gpu/startup_ab.sh 2 > /dev/null 2>&1; cat $OUT/startup.txt >> $S
tar czf $OUT/start_logs.tgz -C $OUT $(cd $OUT && ls start_*.log) && rm -f $OUT/start_*.log $OUT/startup.txt
export PAGODA_CACHE=$PWD/out/pc
for lv in 256 64; do
  CLIENTS=4 N=500 LEVELS=$lv TAG=_mbt512 SERVE_FLAGS="--max-num-batched-tokens 512" \
    bash benchmarks/gpu/issue21_timeline.sh stream > /dev/null 2>&1
done
rm -f $OUT/core_steps_*.jsonl $OUT/serve_c256_mbt512.log
grep -vE "^(Successful|Maximum|Request rate|Total|Prefix|Requests with|=|-)" $S > $OUT/s2.txt; mv $OUT/s2.txt $S
gzip -9 $OUT/serve_*.json
