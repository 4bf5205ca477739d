#!/usr/bin/env bash
# Issue 21 item 1: `pagoda serve` from the shell to ready (GET /v1/models answers 200), Llama-3-8B shape, bf16, dummy
# weights, with the engine core started before the front end's imports (PAGODA_PRELAUNCH_CORE=1, the default) and
# after them (0). Cold: fresh caches (PAGODA_CACHE, TRITON_CACHE_DIR) for each arm; then warm, arms alternating ROUNDS times.
# Usage on the GPU machine: bash benchmarks/gpu/startup_ab.sh [ROUNDS]   (results in $OUT/startup.txt and the logs);
# COLD="1 0" (default) names the arms started cold, in order ("1": only the default arm, "": none);
# BASE_SRC=dir (a checkout of an earlier pagoda, e.g. `git archive <rev> pagoda | tar -x -C dir`) adds a warm arm
# "base" run from that folder with its own defaults, each round: a same-run baseline.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"; R="$OUT/startup.txt"
M="${M:-/tmp/llama3-8b-shape}"; ROUNDS="${1:-2}"; PORT=8031
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
start() {  # label prelaunch cache [source folder]
  local label=$1 pl=$2 cache=$3 src=${4:-.} t0 t1
  t0=$(date +%s.%N)
  (cd "$src" && PAGODA_PRELAUNCH_CORE=$pl PAGODA_CACHE=$cache TRITON_CACHE_DIR=$cache/triton exec python -m pagoda.entrypoints.cli \
    --log-level INFO serve "$M" --load-format dummy --port $PORT --max-model-len "${MAX_LEN:-4096}" --disable-log-requests \
    > "$OUT/start_$label.log" 2>&1) &
  local pid=$!
  until curl -sf "localhost:$PORT/v1/models" > /dev/null; do
    sleep 0.05
    kill -0 $pid 2>/dev/null || { echo "$label: server exited" | tee -a "$R"; return; }
  done
  t1=$(date +%s.%N)
  echo "$label prelaunch=$pl: $(python -c "print(f'{$t1 - $t0:.2f}')") s shell to ready" | tee -a "$R"
  grep -E "ready|Captured|Loaded" "$OUT/start_$label.log" | sed 's/^/    /' >> "$R"
  kill -INT $pid; wait $pid 2>/dev/null
}
WARM_CACHE=/tmp/pc_warm
for pl in ${COLD-1 0}; do
  start "cold_$([ "$pl" = 1 ] && echo on || echo off)" "$pl" "/tmp/pc_cold_$pl"
  [ -d "$WARM_CACHE" ] || cp -r "/tmp/pc_cold_$pl" "$WARM_CACHE"
done
for r in $(seq 1 "$ROUNDS"); do
  start "warm_off_r$r" 0 "$WARM_CACHE"
  start "warm_on_r$r" 1 "$WARM_CACHE"
  [ -z "${BASE_SRC:-}" ] || start "warm_base_r$r" 1 "$WARM_CACHE" "$BASE_SRC"
done
