#!/bin/bash
# Session 16, call 4: launch pacing A/B (PAGODA_LAUNCH_PACING=1/0) at 64 streams (twice each, alternating) and 256
# streams, ShareGPT-like, with the per-request TTFT breakdown.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
run() {  # $1 pacing, $2 streams, $3 tag
  export PAGODA_LAUNCH_PACING=$1 PAGODA_REQUEST_TRACE=$OUT/trace_$3.jsonl
  OUT=$OUT CLIENTS=4 N=800 LEVELS=$2 TAG=_$3 SERVE_FLAGS="--max-num-batched-tokens 512" timeout 300 \
    bash benchmarks/gpu/issue21_timeline.sh stream > $OUT/stream_$3.txt 2>&1
  echo "=== pacing=$1 streams=$2 ($3)" | tee -a $OUT/call4_summary.txt
  grep -E "Output token throughput|P50 TTFT|P99 TTFT|P50 ITL|P99 ITL|ITL P99 / P50|API server CPU ms per output|between steps" \
    $OUT/stream_$3.txt | tee -a $OUT/call4_summary.txt
  python benchmarks/ttft_breakdown.py $OUT/serve_c$2_$3.json $OUT/trace_$3.jsonl | tee -a $OUT/call4_summary.txt
}
run 1 64 p1a
run 0 64 p0a
run 1 64 p1b
run 0 64 p0b
run 1 256 p1c
run 0 256 p0c
cd $OUT && tar czf call4_raw.tgz serve_c*.json trace_*.jsonl core_steps_*.jsonl stream_*.txt && \
  rm -f serve_c*.json trace_*.jsonl core_steps_*.jsonl stream_*.txt serve_c*.log summary.txt
ls -la $OUT
