#!/usr/bin/env bash
# Session-8 device call 8 (run inline): 64 and 256 streams with --max-num-batched-tokens 384 (call 1 ran 512), the
# load generator in 4 processes.
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1; export PYTHONPATH="$PWD:/tmp/site" PAGODA_CACHE=$PWD/out/pc
for lv in 64 256; do
  CLIENTS=4 N=500 LEVELS=$lv TAG=_mbt384 SERVE_FLAGS="--max-num-batched-tokens 384" bash benchmarks/gpu/issue21_timeline.sh stream > /dev/null 2>&1
done
rm -f $OUT/core_steps_* $OUT/*.log; gzip -9 $OUT/serve_*.json
