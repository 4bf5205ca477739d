#!/bin/bash
# NOT RUN (session 50: no machine after call 1; carry ["wheels"]): issue 21 item 3 at 64 streams with one and two API server processes
# (`--api-server-count`), 600 ShareGPT-like requests each, alternating 1, 2, 1, 2 while the time allows; the TTFT
# split by ttft_breakdown.py. Same server command as session 45's call 4 (budget 384).
set -uo pipefail
export CAP=${CAP:-400}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
run() {  # $1 api server count, $2 tag
  export PAGODA_REQUEST_TRACE=$OUT/trace_$2.jsonl
  step stream_$2 110 python -m pagoda.entrypoints.cli --log-level WARNING bench serve \
    --port 8021 --tokenizer $M --dataset-name sharegpt --num-prompts 600 --max-concurrency 64 \
    --ignore-eos --serve-timeout 100 --serve-log $OUT/serve_$2.log --num-client-processes 4 \
    --serve-cmd "python -m pagoda.entrypoints.cli --log-level INFO serve $M --load-format dummy --port 8021 \
--max-model-len 4096 --disable-log-requests --uvicorn-log-level warning --max-num-batched-tokens 384 \
--api-server-count $1" \
    --save-result --result-dir $OUT --result-filename serve_$2.json
  [ -f $OUT/serve_$2.json ] || return
  echo "=== api_server_count=$1 streams=64 budget=384 ($2)" >> $S
  grep -E "Output token throughput|P50 TTFT|P99 TTFT|P50 ITL|P99 ITL|ITL P99 / P50" $OUT/stream_$2.txt >> $S
  python benchmarks/ttft_breakdown.py $OUT/serve_$2.json $OUT/trace_$2.jsonl >> $S 2>&1
}
run 1 a1_1; run 2 a2_1; run 1 a1_2; run 2 a2_2
cd $OUT && tar czf raw.tgz serve_*.json trace_*.jsonl stream_*.txt serve_*.log 2>/dev/null; \
  rm -f serve_*.json trace_*.jsonl stream_*.txt serve_*.log
cat $S
exit 0
