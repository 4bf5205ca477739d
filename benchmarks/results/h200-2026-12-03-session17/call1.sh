#!/bin/bash
# Session 17, call 1: the step budget at 64 and 256 streams (issue 21 item 3): TTFT vs ITL p99/p50,
# ShareGPT-like 800 requests, 4 load-generator processes, pacing on (default), per-request TTFT breakdown.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
S=$OUT/call1_summary.txt
run() {  # $1 streams, $2 budget ("" = default), $3 tag
  export PAGODA_REQUEST_TRACE=$OUT/trace_$3.jsonl
  local flags=""; [ -n "$2" ] && flags="--max-num-batched-tokens $2"
  OUT=$OUT CLIENTS=4 N=800 LEVELS=$1 TAG=_$3 SERVE_FLAGS="$flags" timeout 300 \
    bash benchmarks/gpu/issue21_timeline.sh stream > $OUT/stream_$3.txt 2>&1
  echo "=== streams=$1 budget=${2:-default} ($3)" | tee -a $S
  grep -E "Output token throughput|P50 TTFT|P99 TTFT|P50 ITL|P99 ITL|ITL P99 / P50|API server CPU ms per output|between steps|mixed|decode-only" \
    $OUT/stream_$3.txt | tee -a $S
  python benchmarks/ttft_breakdown.py $OUT/serve_c$1_$3.json $OUT/trace_$3.jsonl | tee -a $S
}
run 256 512 a512
run 256 1024 a1024
run 256 2048 a2048
run 256 "" adef
run 64 512 b512
run 64 "" bdef
run 256 768 a768
cd $OUT && tar czf call1_raw.tgz serve_c*.json trace_*.jsonl core_steps_*.jsonl stream_*.txt && \
  rm -f serve_c*.json trace_*.jsonl core_steps_*.jsonl stream_*.txt serve_c*.log summary.txt
ls -la $OUT
