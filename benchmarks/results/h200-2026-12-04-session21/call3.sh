#!/bin/bash
# Session 21, call 3: mixed-graph buckets up to 2,048 tokens (new) against 512 (base: ab_base = `git archive` of the
# launch-pacing commit), served at 256 streams (call.sh's runs), then offline ShareGPT-like throughput per arm.
# Usage: bash benchmarks/results/h200-2026-12-04-session21/call3.sh "ARM API STREAMS BUDGET FLAGS" ...
set -uo pipefail
bash benchmarks/results/h200-2026-12-04-session21/call.sh call3 "$@"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
for arm in base new; do
  tree=$PWD; [ $arm = base ] && tree=$PWD/ab_base
  (cd $tree && PYTHONPATH="$tree:/tmp/site" timeout 150 python -m pagoda.entrypoints.cli --log-level INFO bench \
    throughput --model /tmp/llama3-8b-shape --load-format dummy --dataset sharegpt --num-prompts 300 \
    > $OUT/call3_tp_$arm.txt 2>&1)
  echo "throughput $arm: $(grep -E 'req/s' $OUT/call3_tp_$arm.txt | tail -1)"
  grep -E "Captured CUDA graphs for mixed|graph captures|Engine built" $OUT/call3_tp_$arm.txt | cut -c1-300
done
