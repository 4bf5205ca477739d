#!/usr/bin/env bash
# Serving figures on CPU for benchmarks/RESULTS.md: the default model behind `pagoda serve` with 32
# concurrent streaming clients (56 prompt tokens, 128 output tokens) against the offline throughput of
# the same workload in the same run; optionally the llama-cpp-python server on the same GGUF as a peer.
#
#   benchmarks/cpu/run_serve_cpu.sh                      # pagoda offline + pagoda serve
#   LLAMA_PY=/path/to/venv/bin/python GGUF=/path/model.gguf benchmarks/cpu/run_serve_cpu.sh   # + peer
#
# The machine should be otherwise idle: with torch's default OpenMP wait policy, any foreign CPU load
# makes the engine's spinning threads wait on descheduled peers (see docs/serving.md, "CPU notes").
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-benchmarks/results/cpu-serve-$(date +%F)}"; mkdir -p "$OUT"
PORT="${PORT:-8765}"
N=32; IN=56; OUTLEN=128

wait_health() {
  for _ in $(seq 1 600); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health" || true)" = 200 ]; then return 0; fi
    sleep 0.5
  done
  echo "server on port $1 did not become healthy" >&2; return 1
}

echo "== offline: pagoda bench throughput" | tee "$OUT/summary.txt"
pagoda --log-level WARNING bench throughput --num-prompts $N --input-len $IN --output-len $OUTLEN \
  --output-json "$OUT/offline.json" 2>&1 | grep -E "^\[" | tee -a "$OUT/summary.txt"

echo "== online: pagoda serve + pagoda bench serve (max concurrency $N)" | tee -a "$OUT/summary.txt"
pagoda --log-level WARNING serve --port "$PORT" --disable-log-requests --disable-uvicorn-access-log \
  --uvicorn-log-level warning > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null || true' EXIT
wait_health "$PORT"
pagoda --log-level WARNING bench serve --port "$PORT" --num-prompts $N --max-concurrency $N \
  --random-input-len $IN --random-output-len $OUTLEN --ignore-eos --label pagoda \
  --save-result --result-dir "$OUT" --result-filename serve_pagoda.json 2>&1 | tee -a "$OUT/summary.txt"
kill -INT $SERVER; wait $SERVER || true
trap - EXIT

if [ -n "${LLAMA_PY:-}" ] && [ -n "${GGUF:-}" ]; then
  echo "== peer: llama-cpp-python server on $GGUF" | tee -a "$OUT/summary.txt"
  "$LLAMA_PY" -m llama_cpp.server --model "$GGUF" --port $((PORT + 1)) --n_ctx 8192 --n_threads "$(nproc)" \
    --interrupt_requests False \
    > "$OUT/llama_server.log" 2>&1 &
  PEER=$!
  trap 'kill $PEER 2>/dev/null || true' EXIT
  # llama-cpp-python has no /tokenize and no ignore_eos: prompts are length-estimated, and a logit_bias
  # of -100 on SmolLM2's end tokens (<|endoftext|>=0, <|im_end|>=2) keeps every request to its full length.
  for _ in $(seq 1 240); do curl -s -o /dev/null "http://127.0.0.1:$((PORT + 1))/v1/models" && break; sleep 0.5; done
  pagoda --log-level WARNING bench serve --port $((PORT + 1)) --num-prompts $N --max-concurrency $N \
    --random-input-len $IN --random-output-len $OUTLEN --label llama-cpp-python \
    --extra-body '{"logit_bias": {"0": -100, "2": -100}}' \
    --save-result --result-dir "$OUT" --result-filename serve_llama_cpp.json 2>&1 | tee -a "$OUT/summary.txt"
  kill $PEER; wait $PEER || true
fi
