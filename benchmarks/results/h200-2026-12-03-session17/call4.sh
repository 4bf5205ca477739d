#!/bin/bash
# Session 17, call 4: --stream-interval 1 vs 4 at 256 streams (budget 2048: no queue, the API process the bottleneck)
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
S=$OUT/call4_summary.txt
run() {  # $1 stream interval, $2 streams, $3 budget, $4 tag
  export PAGODA_REQUEST_TRACE=$OUT/trace_$4.jsonl
  timeout -k 20 280 python -m pagoda.entrypoints.cli --log-level WARNING bench serve \
    --port 8021 --tokenizer $M --dataset-name sharegpt --num-prompts 800 --max-concurrency $2 \
    --ignore-eos --serve-timeout 200 --serve-log $OUT/serve_$4.log --num-client-processes 4 \
    --serve-cmd "python benchmarks/gpu/with_module_values.py pagoda.engine.async_llm.FIRST_TOKENS_FIRST=True -- \
--log-level INFO serve $M --load-format dummy --port 8021 --max-model-len 4096 --disable-log-requests \
--uvicorn-log-level warning --max-num-batched-tokens $3 --stream-interval $1" \
    --save-result --result-dir $OUT --result-filename serve_$4.json > $OUT/stream_$4.txt 2>&1
  echo "=== stream_interval=$1 streams=$2 budget=$3 ($4)" | tee -a $S
  grep -E "Output token throughput|P50 TTFT|P99 TTFT|P50 ITL|P99 ITL|ITL P99 / P50|API server CPU ms per output" \
    $OUT/stream_$4.txt | tee -a $S
  python benchmarks/ttft_breakdown.py $OUT/serve_$4.json $OUT/trace_$4.jsonl | tee -a $S
}
run 1 256 2048 si1
run 4 256 2048 si4
cd $OUT && tar czf call4_raw.tgz serve_*.json trace_*.jsonl stream_*.txt serve_*.log && \
  rm -f serve_*.json trace_*.jsonl stream_*.txt serve_*.log
ls -la $OUT
