#!/bin/bash
# Session 16, call 2: host cost of replaying each captured graph (why the batch-32 verify replay() took 292 us),
# and py-spy profiles of the API server and the engine core under 64 streams.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 200 python benchmarks/gpu/graph_launch_cost.py --engine $M --iters 40 \
  --engine-args '{"speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}, "max_model_len": 2048}' \
  2>&1 | grep -v "Warning\|warn_once\|rope_param" | tee $OUT/call2_graph_replay_spec.txt
timeout 120 python benchmarks/gpu/graph_launch_cost.py --nodes 1 400 --iters 100 2>&1 | tee -a $OUT/call2_graph_replay_spec.txt
# py-spy on the API server and the engine core once 40+ requests run (10 s at 250 Hz, non-blocking)
(
  for i in $(seq 1 240); do
    n=$(curl -s localhost:8021/metrics 2>/dev/null | grep -E '^pagoda:num_requests_running' | head -1 | awk '{print int($2)}')
    [ -n "$n" ] && [ "$n" -ge 40 ] && break
    sleep 0.5
  done
  api=$(pgrep -f "pagoda.entrypoints.cli --log-level INFO serve" | head -1)
  core=""
  for c in $(pgrep -P "$api"); do tr '\0' ' ' < /proc/$c/cmdline | grep -q resource_tracker || core=$c; done
  ps -o pid,ppid,pcpu,args --ppid "$api" > $OUT/pyspy_children.txt
  echo "api $api core $core running $n" > $OUT/pyspy_pids.txt
  /tmp/site/bin/py-spy record --pid "$api" -d 8 -r 250 --nonblocking --format raw -o $OUT/pyspy_api.txt > $OUT/pyspy_api.log 2>&1 &
  /tmp/site/bin/py-spy record --pid "$core" -d 8 -r 250 --nonblocking --format raw -o $OUT/pyspy_core.txt > $OUT/pyspy_core.log 2>&1 &
  wait
) &
export PAGODA_REQUEST_TRACE=$OUT/trace_c64.jsonl
OUT=$OUT CLIENTS=4 N=800 LEVELS=64 TAG=_mbt512 SERVE_FLAGS="--max-num-batched-tokens 512" timeout 300 bash benchmarks/gpu/issue21_timeline.sh stream > $OUT/call2_stream.txt 2>&1
wait
grep -E "TTFT|ITL|API|Engine|Output token" $OUT/call2_stream.txt | head -20
python benchmarks/ttft_breakdown.py $OUT/serve_c64_mbt512.json $OUT/trace_c64.jsonl | tee $OUT/call2_ttft_breakdown.txt
cat $OUT/pyspy_pids.txt $OUT/pyspy_api.log $OUT/pyspy_core.log
gzip -f $OUT/serve_c64_mbt512.json $OUT/trace_c64.jsonl $OUT/core_steps_c64_mbt512.jsonl $OUT/pyspy_*.txt 2>/dev/null
ls -la $OUT
