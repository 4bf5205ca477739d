# Sourced by benchmarks/gpu/startup_*.sh: sets OUT (default /tmp/out), M (the Llama-3-8B shape, made if missing) and
# PORT; `start LABEL "VAR=value ..." PAGODA_CACHE TRITON_CACHE_DIR [SRC]` starts `pagoda serve` of $M (dummy weights)
# from SRC (default .) with those variables, times the shell to the first 200 of GET /v1/models, appends the figure
# (and whether the front-end process has torch loaded) and the log's start-up lines to $R (set by the caller), and
# stops it.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
M="${M:-/tmp/llama3-8b-shape}"; PORT="${PORT:-8031}"
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
start() {
  local label=$1 vars=$2 cache=$3 tcache=$4 src=${5:-.} t0 t1
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  (cd "$src" && exec env $vars PAGODA_CACHE="$cache" TRITON_CACHE_DIR="$tcache" python -m pagoda.entrypoints.cli \
    --log-level INFO serve "$M" --load-format dummy --port "$PORT" --max-model-len "${MAX_LEN:-4096}" \
    --disable-log-requests > "$OUT/start_$label.log" 2>&1) &
  local pid=$!
  until curl -sf "localhost:$PORT/v1/models" > /dev/null; do
    sleep 0.05
    kill -0 $pid 2>/dev/null || { echo "$label: server exited" | tee -a "$R"; return; }
  done
  t1=$(date +%s.%N)
  local torch_in_front="front end without torch"
  grep -q libtorch "/proc/$pid/maps" 2>/dev/null && torch_in_front="front end has torch loaded"
  echo "$label $vars: $(python -c "print(f'{$t1 - $t0:.2f}')") s shell to ready ($torch_in_front)" | tee -a "$R"
  grep -E "ready|Captured|Loaded|Compiled or loaded|Engine built" "$OUT/start_$label.log" | grep -v GET \
    | sed 's/^/    /' >> "$R"
  kill -INT $pid; wait $pid 2>/dev/null
}
