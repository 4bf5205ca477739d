#!/usr/bin/env bash
# Session-7 device call 1: mixed-step CUDA graphs (new, issue 21 item 3). Their GPU test and the graph tests beside it;
# the split-KV decode launch sweep (session 6's spill lead, issue 13/21 item 5); then 64 concurrent streams (ShareGPT-like
# 500, Llama-3-8B shape) with mixed graphs off (same-run baseline) and on, on with --long-prefill-token-threshold 256,
# and 256 streams with both.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env 2>&1 | tail -4 > $OUT/env.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
S=$OUT/summary.txt; cat $OUT/env.txt >> $S
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "gpu tests"
timeout 200 python -m pytest tests/gpu/test_gpu_kv_features.py tests/gpu/test_gpu_spec_verify_graphs.py -q -rf \
  -p no:cacheprovider > $OUT/tests.txt 2>&1; tail -6 $OUT/tests.txt | tee -a $S
log "decode attention launch sweep"
timeout 90 python benchmarks/gpu/decode_attn_sweep.py > $OUT/sweep.txt 2>&1; tail -30 $OUT/sweep.txt >> $S
run() {  # tag levels env... -- serve flags
  local tag=$1 lv=$2; shift 2
  env "$@" N=500 LEVELS=$lv TAG=$tag bash benchmarks/gpu/issue21_timeline.sh stream > /dev/null 2>&1
}
run _base 64 PAGODA_MIXED_GRAPHS=0
run _mg 64 PAGODA_MIXED_GRAPHS=1
run _mg_t256 64 SERVE_FLAGS="--long-prefill-token-threshold 256"
run _mg_t256 256 SERVE_FLAGS="--long-prefill-token-threshold 256"
grep -E "graphs|ready|start-up" $OUT/serve_c64_mg.log | head -12 >> $S
rm -f $OUT/core_steps_*.jsonl $OUT/serve_c64_base.log $OUT/serve_c64_mg_t256.log $OUT/serve_c256_mg_t256.log $OUT/env.txt
grep -vE "^(Successful|Failed|Maximum|Request rate|Total|Prefix|Requests with|=|-)" $OUT/summary.txt > $OUT/s2.txt; mv $OUT/s2.txt $S
