#!/usr/bin/env bash
# Issue 21 item 1: `pagoda serve` from the shell to ready (GET /v1/models answers 200), Llama-3-8B shape, bf16, dummy
# weights, with the start-up Triton precompiler (pagoda/worker/jit_precompile.py) on and off.
# Cold arms, each with fresh caches (PAGODA_CACHE and TRITON_CACHE_DIR): precompile on (dry pass), off; then
# "manifest": the first arm's PAGODA_CACHE (its variant manifest, its tokenizer class) with an empty Triton cache.
# Warm arms, ROUNDS times, on the first arm's caches: on, off, and BASE_SRC (an earlier checkout, if given).
# Usage on the GPU machine: bash benchmarks/gpu/startup_jit.sh [ROUNDS]   (results in $OUT/startup_jit.txt, logs
# in $OUT/start_*.log); ARMS="cold_on warm_on ..." runs a subset (cold_on always runs: the others use its caches)
set -uo pipefail
ROUNDS="${1:-2}"
. "$(dirname "$0")/startup_lib.sh"
R="$OUT/startup_jit.txt"
ARMS=" ${ARMS:-cold_on cold_off cold_manifest warm_on warm_off warm_base} "
want() { [[ "$ARMS" == *" $1 "* ]]; }
C=/tmp/sj; rm -rf $C; mkdir -p $C
start cold_on PAGODA_JIT_PRECOMPILE=1 $C/p1 $C/p1/triton
want cold_off && start cold_off PAGODA_JIT_PRECOMPILE=0 $C/p0 $C/p0/triton
if want cold_manifest; then
  cp -r $C/p1 $C/pm && rm -rf $C/pm/triton
  start cold_manifest PAGODA_JIT_PRECOMPILE=1 $C/pm $C/pm/triton
fi
for r in $(seq 1 "$ROUNDS"); do
  want warm_on && start "warm_on_r$r" PAGODA_JIT_PRECOMPILE=1 $C/p1 $C/p1/triton
  want warm_off && start "warm_off_r$r" PAGODA_JIT_PRECOMPILE=0 $C/p1 $C/p1/triton
  if want warm_base && [ -n "${BASE_SRC:-}" ]; then
    start "warm_base_r$r" PAGODA_JIT_PRECOMPILE=1 $C/p1 $C/p1/triton "$BASE_SRC"
  fi
done
