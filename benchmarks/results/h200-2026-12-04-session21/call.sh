#!/bin/bash
# Session 21: launch pacing that holds with requests waiting (Scheduler.room_for_arrival) against the rule before
# it (a5d3c3c: no hold while any request waits), end to end at 256 and 64 streams.
# Usage (GPU machine, repo root, carry wheels and ab_base = `git archive a5d3c3c pagoda`):
#   bash benchmarks/results/h200-2026-12-04-session21/call.sh CALL "ARM API_SERVERS STREAMS BUDGET [FLAGS...]" ...
# ARM: new (this tree) or base (ab_base/). Each spec is one 800-request ShareGPT-like run with the step timeline.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
ROOT=$PWD
M=/tmp/llama3-8b-shape
PYTHONPATH="$ROOT:/tmp/site" python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
CALL=$1; shift
S=$OUT/${CALL}_summary.txt
run() {  # $1 arm, $2 api server count, $3 streams, $4 budget, $5 tag, $6 more serve flags
  local tree=$ROOT
  [ "$1" = base ] && tree=$ROOT/ab_base
  export PAGODA_REQUEST_TRACE=$OUT/trace_$5.jsonl PAGODA_STEP_TIMELINE=$OUT/steps_$5.jsonl
  (cd "$tree" && PYTHONPATH="$tree:/tmp/site" timeout -k 20 280 python -m pagoda.entrypoints.cli --log-level WARNING \
    bench serve --port 8021 --tokenizer $M --dataset-name sharegpt --num-prompts 800 --max-concurrency $3 \
    --ignore-eos --serve-timeout 200 --serve-log $OUT/serve_$5.log --num-client-processes 4 \
    --serve-cmd "python -m pagoda.entrypoints.cli --log-level INFO serve $M --load-format dummy --port 8021 \
--max-model-len 4096 --disable-log-requests --uvicorn-log-level warning --max-num-batched-tokens $4 \
--api-server-count $2 $6" \
    --save-result --result-dir $OUT --result-filename serve_$5.json > $OUT/stream_$5.txt 2>&1)
  echo "=== arm=$1 api_server_count=$2 streams=$3 budget=$4 flags='$6' ($5)" | tee -a $S
  grep -E "Output token throughput|P50 TTFT|P99 TTFT|P50 ITL|P99 ITL|ITL P99 / P50|API server CPU ms per output|Engine core CPU" \
    $OUT/stream_$5.txt | tee -a $S
  PYTHONPATH="$ROOT:/tmp/site" python benchmarks/ttft_breakdown.py $OUT/serve_$5.json $OUT/trace_$5.jsonl \
    --steps $OUT/steps_$5.jsonl | tee -a $S
}
i=0
for spec in "$@"; do
  set -- $spec; more="${*:5}"
  i=$((i+1))
  run $1 $2 $3 $4 "${CALL}_$1_asc$2_s$3_b$4_$i" "$more"
done
cd $OUT && tar czf ${CALL}_raw.tgz serve_*.log stream_*.txt steps_*.jsonl && \
  rm -f serve_*.json trace_*.jsonl stream_*.txt serve_*.log steps_*.jsonl
ls -la $OUT
