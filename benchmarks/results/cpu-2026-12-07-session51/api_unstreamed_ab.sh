#!/bin/bash
# A/B: API server CPU per unstreamed request, da1a407 (cumulative output each token) vs HEAD (FINAL_ONLY)
cd /work/main
for round in 1 2 3; do
  for arm in old new; do
    root=/work/main; [ $arm = old ] && root=/tmp/w51/old
    echo "== round $round arm $arm"
    (cd $root && PYTHONPATH=$root timeout 600 /work/main/.venv/bin/python /work/main/benchmarks/api_stream_cost.py --no-stream --num-prompts 300 --max-concurrency 64 --step-ms 20 --port 8041) 2>&1 | grep -E "API server CPU|wall"
  done
done
