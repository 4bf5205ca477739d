#!/usr/bin/env bash
# CPU figures for benchmarks/RESULTS.md, in parts (default: ceilings throughput):
#
#   bash benchmarks/cpu/run_cpu.sh                       # ceilings + pagoda vs HF throughput
#   bash benchmarks/cpu/run_cpu.sh prefix                # shared-prefix workload (prefix caching)
#   PREFIX_NUM_PROMPTS=50 PREFIX_NUM_PREFIXES=10 bash benchmarks/cpu/run_cpu.sh prefix   # smaller
#
# ceilings:   the machine's copy bandwidth and bf16 matmul rate.
# throughput: the default model (SmolLM2-135M-Instruct, bf16) against HF transformers generate, same run.
# prefix:     PREFIX_NUM_PREFIXES system prompts of PREFIX_LEN tokens shared by PREFIX_NUM_PROMPTS requests
#             (+ SUFFIX_LEN own tokens, PREFIX_OUTPUT_LEN output tokens each): offline with prefix caching on
#             against off in the same process, plus the TTFT of a request alone whose prefix is cached against
#             uncached; then `pagoda serve` + `pagoda bench serve` one request at a time (hit rate from
#             /metrics, TTFT of first-seen vs repeated prefixes). On a machine shared with other jobs,
#             OMP_WAIT_POLICY=PASSIVE (set here unless given) keeps the engine from collapsing.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-benchmarks/results/cpu-$(date +%F)}"; mkdir -p "$OUT"
PARTS="${*:-ceilings throughput}"

for part in $PARTS; do
case "$part" in
ceilings)
python - <<'PY' | tee "$OUT/ceilings.txt"
import time, torch
x = torch.empty(256 * 2**20, dtype=torch.uint8).fill_(1); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
t = time.perf_counter()
for _ in range(10): y.copy_(x)
print(f"copy bandwidth (read+write): {2 * x.numel() * 10 / (time.perf_counter() - t) / 1e9:.1f} GB/s")
a = torch.randn(2048, 2048, dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(2): a @ b
t = time.perf_counter()
for _ in range(5): a @ b
print(f"bf16 matmul 2048^3: {2 * 2048**3 * 5 / (time.perf_counter() - t) / 1e9:.0f} GFLOP/s")
PY
;;
throughput)
pagoda --log-level WARNING bench throughput --num-prompts 32 --input-len 56 --output-len 128 --backend both \
  --output-json "$OUT/b32.json" 2>&1 | grep -E "^\[|x$" | tee "$OUT/b32.txt"
pagoda --log-level WARNING bench throughput --num-prompts 1 --input-len 56 --output-len 128 --backend both \
  --output-json "$OUT/b1.json" 2>&1 | grep -E "^\[|x$" | tee "$OUT/b1.txt"
;;
prefix)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
N="${PREFIX_NUM_PROMPTS:-200}"; P="${PREFIX_NUM_PREFIXES:-20}"; L="${PREFIX_LEN:-2000}"
S="${SUFFIX_LEN:-100}"; O="${PREFIX_OUTPUT_LEN:-32}"; PORT="${PORT:-8765}"
DS=(--dataset-name prefix_repetition --prefix-repetition-num-prefixes "$P" --prefix-repetition-prefix-len "$L"
    --prefix-repetition-suffix-len "$S" --prefix-repetition-output-len "$O")
echo "== offline: $N requests, $P prefixes of $L tokens + $S, $O out; caching on vs off" | tee "$OUT/prefix.txt"
pagoda --log-level WARNING bench throughput "${DS[@]}" --num-prompts "$N" --compare-no-prefix-caching \
  --output-json "$OUT/prefix_offline.json" 2>&1 | grep -E "^\[|x faster" | tee -a "$OUT/prefix.txt"
echo "== online: pagoda serve, bench serve --max-concurrency 1, ${SERVE_NUM_PROMPTS:-$((P * 3))} requests" \
  | tee -a "$OUT/prefix.txt"
pagoda --log-level INFO serve --port "$PORT" --disable-log-requests --disable-uvicorn-access-log \
  --uvicorn-log-level warning > "$OUT/prefix_serve.log" 2>&1 &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health" || true)" = 200 ] && break; sleep 0.5
done
pagoda --log-level WARNING bench serve --port "$PORT" "${DS[@]}" --num-prompts "${SERVE_NUM_PROMPTS:-$((P * 3))}" \
  --max-concurrency 1 --ignore-eos --reset-prefix-cache --label prefix \
  --save-result --result-dir "$OUT" --result-filename prefix_serve.json 2>&1 \
  | grep -E "Successful|duration|Prefix cache|TTFT|first-seen|repeated" | tee -a "$OUT/prefix.txt"
grep "Prefix cache hit rate" "$OUT/prefix_serve.log" | tail -1 | tee -a "$OUT/prefix.txt" || true
kill -INT $SERVER; wait $SERVER || true
trap - EXIT
;;
*) echo "unknown part: $part (ceilings, throughput, prefix)" >&2; exit 2 ;;
esac
done
