#!/bin/bash
# Session 16, call 3: the verify step's host phases with the start-up heap frozen out of GC (A/B), a native py-spy
# profile of the batch-32 verify steps, and the 64-stream run with the server's heaps frozen + py-spy of its processes.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
W="pagoda.worker.verify_graphs:VerifyGraphs.run pagoda.worker.model_runner:prepare_inputs pagoda.worker.model_runner:ModelRunner._block_table_rows"
EA='{"speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}, "max_model_len": 2048}'
for f in 0 1 0 1; do
  echo "== PAGODA_GC_FREEZE=$f" >> $OUT/call3_phases_gc.txt
  PAGODA_GC_FREEZE=$f timeout 200 python benchmarks/gpu/profile_steps.py $M --batch 32 --steps 60 --phases --wrap $W \
    --engine-args "$EA" 2>&1 | grep -v "Warning\|warn_once\|rope_param" | grep -B30 "event wait returned" >> $OUT/call3_phases_gc.txt
done
grep -E "==|replay|VerifyGraphs|schedule|update|prepare|event wait returned" $OUT/call3_phases_gc.txt
timeout 200 /tmp/site/bin/py-spy record --native --nonblocking -r 400 --format raw -o $OUT/pyspy_verify32.txt -- \
  python benchmarks/gpu/profile_steps.py $M --batch 32 --steps 300 --engine-args "$EA" > $OUT/call3_pyspy_verify.log 2>&1
tail -3 $OUT/call3_pyspy_verify.log
(
  for i in $(seq 1 240); do
    n=$(curl -s localhost:8021/metrics 2>/dev/null | grep -E '^pagoda:num_requests_running' | head -1 | awk '{print int($2)}')
    [ -n "$n" ] && [ "$n" -ge 40 ] && break
    sleep 0.5
  done
  api=$(pgrep -f '^python -m pagoda.entrypoints.cli --log-level INFO serve' | head -1)
  core=""
  for c in $(pgrep -P "$api"); do tr '\0' ' ' < /proc/$c/cmdline | grep -q resource_tracker || core=$c; done
  echo "api $api core $core running $n; children:" > $OUT/pyspy_pids.txt
  ps -o pid,ppid,pcpu,args --ppid "$api" | cut -c1-150 >> $OUT/pyspy_pids.txt
  /tmp/site/bin/py-spy record --pid "$api" -d 8 -r 250 --nonblocking --format raw -o $OUT/pyspy_api.txt > $OUT/pyspy_api.log 2>&1 &
  /tmp/site/bin/py-spy record --pid "$core" -d 8 -r 250 --nonblocking --format raw -o $OUT/pyspy_core.txt > $OUT/pyspy_core.log 2>&1 &
  wait
) &
export PAGODA_REQUEST_TRACE=$OUT/trace_c64.jsonl
OUT=$OUT CLIENTS=4 N=800 LEVELS=64 TAG=_mbt512 SERVE_FLAGS="--max-num-batched-tokens 512" timeout 300 bash benchmarks/gpu/issue21_timeline.sh stream > $OUT/call3_stream.txt 2>&1
wait
grep -E "TTFT|ITL|API|Engine|Output token" $OUT/call3_stream.txt | head -12
python benchmarks/ttft_breakdown.py $OUT/serve_c64_mbt512.json $OUT/trace_c64.jsonl | tee $OUT/call3_ttft_breakdown.txt
cat $OUT/pyspy_pids.txt $OUT/pyspy_api.log $OUT/pyspy_core.log | tail -12
cd $OUT && tar czf call3_raw.tgz serve_c64_mbt512.json trace_c64.jsonl core_steps_c64_mbt512.jsonl pyspy_*.txt pyspy_*.log \
  summary.txt serve_c64_mbt512.log call3_pyspy_verify.log && rm -f serve_c64_mbt512.json trace_c64.jsonl \
  core_steps_c64_mbt512.jsonl pyspy_*.txt pyspy_*.log summary.txt serve_c64_mbt512.log call3_pyspy_verify.log
ls -la $OUT
