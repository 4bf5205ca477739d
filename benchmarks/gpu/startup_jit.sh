#!/usr/bin/env bash
# Issue 21 item 1: `pagoda serve` from the shell to ready (GET /v1/models answers 200), Llama-3-8B shape, bf16, dummy
# weights, with the start-up Triton precompiler (pagoda/worker/jit_precompile.py) on and off.
# Cold arms, each with fresh caches (PAGODA_CACHE and TRITON_CACHE_DIR): precompile on (dry pass), off; then
# "manifest": the first arm's PAGODA_CACHE (its variant manifest, its tokenizer class) with an empty Triton cache.
# Warm arms, ROUNDS times, on the first arm's caches: on, off, and BASE_SRC (an earlier checkout, if given).
# Usage on the GPU machine: bash benchmarks/gpu/startup_jit.sh [ROUNDS]   (results in $OUT/startup_jit.txt, logs
# in $OUT/start_*.log)
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"; R="$OUT/startup_jit.txt"
M="${M:-/tmp/llama3-8b-shape}"; ROUNDS="${1:-2}"; PORT=8031
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
start() {  # label precompile pagoda_cache triton_cache [source folder]
  local label=$1 pre=$2 cache=$3 tcache=$4 src=${5:-.} t0 t1
  t0=$(date +%s.%N)
  (cd "$src" && PAGODA_JIT_PRECOMPILE=$pre PAGODA_CACHE=$cache TRITON_CACHE_DIR=$tcache exec python -m \
    pagoda.entrypoints.cli --log-level INFO serve "$M" --load-format dummy --port $PORT \
    --max-model-len "${MAX_LEN:-4096}" --disable-log-requests > "$OUT/start_$label.log" 2>&1) &
  local pid=$!
  until curl -sf "localhost:$PORT/v1/models" > /dev/null; do
    sleep 0.05
    kill -0 $pid 2>/dev/null || { echo "$label: server exited" | tee -a "$R"; return; }
  done
  t1=$(date +%s.%N)
  echo "$label precompile=$pre: $(python -c "print(f'{$t1 - $t0:.2f}')") s shell to ready" | tee -a "$R"
  grep -E "ready|Captured|Loaded|Compiled or loaded|Engine built" "$OUT/start_$label.log" | grep -v GET \
    | sed 's/^/    /' >> "$R"
  kill -INT $pid; wait $pid 2>/dev/null
}
C=/tmp/sj; rm -rf $C; mkdir -p $C
start cold_on 1 $C/p1 $C/p1/triton
start cold_off 0 $C/p0 $C/p0/triton
cp -r $C/p1 $C/pm && rm -rf $C/pm/triton
start cold_manifest 1 $C/pm $C/pm/triton
for r in $(seq 1 "$ROUNDS"); do
  start "warm_on_r$r" 1 $C/p1 $C/p1/triton
  start "warm_off_r$r" 0 $C/p1 $C/p1/triton
  [ -z "${BASE_SRC:-}" ] || start "warm_base_r$r" 1 $C/p1 $C/p1/triton "$BASE_SRC"
done
