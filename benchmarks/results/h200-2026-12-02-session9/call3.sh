#!/usr/bin/env bash
# Session-9 device call 3: one graph-capture helper for the four graph sets (worker/graph_capture.py), whose dry
# pass runs each capture body once with no warm-ups and no graph (was: the full capture, 4.1 s of call 2's cold
# 15.3 s). Start-up (cold with precompile, warm once), then the GPU tests of the precompiler (every start-up compile
# came from it), mixed-step graphs and verify graphs (device time left: 372 s).
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
echo "== start-up ($(date +%T))" >> $S
ARMS="cold_on warm_on" timeout 60 bash benchmarks/gpu/startup_jit.sh 1 > /dev/null 2>&1
cat $OUT/startup_jit.txt >> $S
tar czf $OUT/start_logs.tgz -C $OUT $(cd $OUT && ls start_*.log) && rm -f $OUT/start_*.log $OUT/startup_jit.txt
echo "== GPU tests ($(date +%T))" >> $S
timeout 150 python -m pytest -q tests/gpu/test_gpu_jit_precompile.py \
  "tests/gpu/test_gpu_kv_features.py::test_mixed_step_graphs_match_eager" tests/gpu/test_gpu_spec_verify_graphs.py \
  -p no:cacheprovider --durations=10 > $OUT/tests.txt 2>&1; echo "pytest rc $?" >> $S
grep -E "passed|failed|error" $OUT/tests.txt | tail -5 >> $S
echo "== done ($(date +%T))" >> $S
