#!/usr/bin/env bash
# Session-6 device call 4 (the last ~7 minutes): issue 21 items 2 and 3 (never run on a GPU before), Llama-3-8B shape:
# the ShareGPT-like 500-request run against its makespan bound with the step timeline, and 64 concurrent streams
# against a server the bench starts (its start-up phases are in the serve log).
set -uo pipefail
export PAGODA_CACHE=$PWD/out/pc
N=500 LEVELS=64 timeout 390 bash benchmarks/gpu/issue21_timeline.sh makespan stream > /dev/null 2>&1
cat $OUT/summary.txt
