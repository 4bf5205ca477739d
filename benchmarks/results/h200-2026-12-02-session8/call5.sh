#!/usr/bin/env bash
# Session-8 device call 5 (run inline): carries the second third of the default model's GGUF; meanwhile 64 streams
# again (the same command as call 1's, a second sample of its ITL ratio).
export PYTHONPATH="$PWD:/tmp/site" PAGODA_CACHE=$PWD/out/pc; ls -la out/g1 out/g2
CLIENTS=4 N=500 LEVELS=64 TAG=_mbt512_r2 SERVE_FLAGS="--max-num-batched-tokens 512" bash benchmarks/gpu/issue21_timeline.sh stream > /dev/null 2>&1
rm -f $OUT/core_steps_*; gzip -9 $OUT/serve_*.json
