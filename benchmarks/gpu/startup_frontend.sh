#!/usr/bin/env bash
# Issue 21 item 1, session 10: `pagoda serve` from the shell to ready (GET /v1/models answers 200), Llama-3-8B shape,
# bf16, dummy weights, this checkout against BASE_SRC (an earlier checkout: the same-run baseline), alternating.
# Cold arms, COLD times each (default 1): fresh PAGODA_CACHE and TRITON_CACHE_DIR each. Warm arms, ROUNDS times each,
# on the first cold round's caches.
# Usage on the GPU machine: BASE_SRC=out/old [COLD=2] bash benchmarks/gpu/startup_frontend.sh [ROUNDS]
# (results in $OUT/startup_frontend.txt, logs in $OUT/start_*.log)
set -uo pipefail
ROUNDS="${1:-3}"
. "$(dirname "$0")/startup_lib.sh"
R="$OUT/startup_frontend.txt"
C=/tmp/sf; rm -rf $C; mkdir -p $C
for c in $(seq 1 "${COLD:-1}"); do
  sfx=$([ "$c" = 1 ] || echo "_$c")
  start "cold_new$sfx" "" $C/new$sfx $C/new$sfx/triton
  start "cold_base$sfx" "" $C/base$sfx $C/base$sfx/triton "$BASE_SRC"
done
for r in $(seq 1 "$ROUNDS"); do
  start "warm_new_r$r" "" $C/new $C/new/triton
  start "warm_base_r$r" "" $C/base $C/base/triton "$BASE_SRC"
done
