#!/bin/bash
# Session 39, call 1 (carry ["wheels"]): this session's engine changes on a GPU (SamplingParams / EngineArgs checks,
# the core's first_scheduled_time, offline API): GPU parity, spec-verify graphs and the no-sync spec path, then
# issue 17's verify-4 step and issue 12's decode steps as a regression check against session 38.
set -uo pipefail
export CAP=420
source benchmarks/results/gpu-2026-12-06-session38/lib.sh
step tests 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_parity.py tests/gpu/test_gpu_spec_verify_graphs.py \
  tests/gpu/test_gpu_spec_no_sync.py tests/test_offline_api_parity.py
echo "tests: $(tail -1 $OUT/tests.txt)" | tee -a $S
step sv 200 bash benchmarks/gpu/spec_verify_bench.sh $OUT/sv
grep -E "^batch .*verify" $OUT/sv.txt | tee -a $S
exit 0
