#!/usr/bin/env bash
# Issue 21 item 1: `pagoda serve` from the shell to ready (GET /v1/models answers 200), Llama-3-8B shape, bf16, dummy
# weights, with the engine core started before the front end's imports (PAGODA_PRELAUNCH_CORE=1, the default) and
# after them (0). Cold: fresh caches (PAGODA_CACHE, TRITON_CACHE_DIR) for each arm; then warm, arms alternating ROUNDS times.
# Usage on the GPU machine: bash benchmarks/gpu/startup_ab.sh [ROUNDS]   (results in $OUT/startup.txt and the logs);
# COLD="1 0" (default) names the arms started cold, in order ("1": only the default arm, "": none);
# BASE_SRC=dir (a checkout of an earlier pagoda, e.g. `git archive <rev> pagoda | tar -x -C dir`) adds a warm arm
# "base" run from that folder with its own defaults, each round: a same-run baseline.
set -uo pipefail
ROUNDS="${1:-2}"
. "$(dirname "$0")/startup_lib.sh"
R="$OUT/startup.txt"
WARM_CACHE=/tmp/pc_warm
for pl in ${COLD-1 0}; do
  start "cold_$([ "$pl" = 1 ] && echo on || echo off)" "PAGODA_PRELAUNCH_CORE=$pl" "/tmp/pc_cold_$pl" \
    "/tmp/pc_cold_$pl/triton"
  [ -d "$WARM_CACHE" ] || cp -r "/tmp/pc_cold_$pl" "$WARM_CACHE"
done
for r in $(seq 1 "$ROUNDS"); do
  start "warm_off_r$r" PAGODA_PRELAUNCH_CORE=0 "$WARM_CACHE" "$WARM_CACHE/triton"
  start "warm_on_r$r" PAGODA_PRELAUNCH_CORE=1 "$WARM_CACHE" "$WARM_CACHE/triton"
  [ -z "${BASE_SRC:-}" ] || start "warm_base_r$r" PAGODA_PRELAUNCH_CORE=1 "$WARM_CACHE" "$WARM_CACHE/triton" "$BASE_SRC"
done
