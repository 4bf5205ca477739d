#!/bin/bash
# Session 20: --api-server-count N (several API server processes on one engine core) at 64 and 256 streams.
# Call 4: as call.sh, with the step timeline (the prefill segment split) and optional extra serve flags (5th field).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
CALL=$1; shift
S=$OUT/${CALL}_summary.txt
run() {  # $1 api server count, $2 streams, $3 budget, $4 tag, $5 more serve flags
  export PAGODA_REQUEST_TRACE=$OUT/trace_$4.jsonl PAGODA_STEP_TIMELINE=$OUT/steps_$4.jsonl
  timeout -k 20 280 python -m pagoda.entrypoints.cli --log-level WARNING bench serve \
    --port 8021 --tokenizer $M --dataset-name sharegpt --num-prompts 800 --max-concurrency $2 \
    --ignore-eos --serve-timeout 200 --serve-log $OUT/serve_$4.log --num-client-processes 4 \
    --serve-cmd "python -m pagoda.entrypoints.cli --log-level INFO serve $M --load-format dummy --port 8021 \
--max-model-len 4096 --disable-log-requests --uvicorn-log-level warning --max-num-batched-tokens $3 \
--api-server-count $1 $5" \
    --save-result --result-dir $OUT --result-filename serve_$4.json > $OUT/stream_$4.txt 2>&1
  echo "=== api_server_count=$1 streams=$2 budget=$3 ($4)" | tee -a $S
  grep -E "Output token throughput|P50 TTFT|P99 TTFT|P50 ITL|P99 ITL|ITL P99 / P50|API server CPU ms per output|Engine core CPU" \
    $OUT/stream_$4.txt | tee -a $S
  python benchmarks/ttft_breakdown.py $OUT/serve_$4.json $OUT/trace_$4.jsonl --steps $OUT/steps_$4.jsonl | tee -a $S
}
i=0
for spec in "$@"; do
  set -- $spec; more="${*:4}"
  i=$((i+1))
  run $1 $2 $3 "${CALL}_asc$1_s$2_b$3_$i" "$more"
done
cd $OUT && tar czf ${CALL}_raw.tgz serve_*.log stream_*.txt steps_*.jsonl && \
  rm -f serve_*.json trace_*.jsonl stream_*.txt serve_*.log steps_*.jsonl
ls -la $OUT
