#!/bin/bash
# Session 21, call 4: GPU tests of the mixed-step graphs (the large buckets against eager, fp32) and the deterministic
# mode's mixed graphs; then call.sh's served runs (ab_base = the launch-pacing commit, new = + the large buckets).
# Usage: bash benchmarks/results/h200-2026-12-04-session21/call4.sh "ARM API STREAMS BUDGET FLAGS" ...
set -uo pipefail
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
PYTHONPATH="$PWD:/tmp/site" timeout 240 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_kv_features.py \
  tests/gpu/test_gpu_deterministic.py tests/test_mixed_graphs.py > $OUT/call4_gpu_tests.txt 2>&1
echo "gpu tests rc=$?"; tail -3 $OUT/call4_gpu_tests.txt
bash benchmarks/results/h200-2026-12-04-session21/call.sh call4 "$@"
