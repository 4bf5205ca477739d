#!/bin/bash
# Session 40, call 1 (carry ["wheels"]): the speculative decoder now loads before the target sizes its KV cache
# (draft weights and KV inside gpu_memory_utilization's share): the speculative tests on the GPU (session 37's run of
# tests/test_spec_decode.py ran out of memory in test_draft_model_greedy_identical beside other engines) and the GPU
# speculative tests. On an H200 first issue 12's never-tuned 4-bit one-row tables (session 36's call 3).
set -uo pipefail
TESTS="tests/test_spec_decode.py tests/test_spec_eagle.py tests/gpu/test_gpu_spec_verify_graphs.py
  tests/gpu/test_gpu_spec_no_sync.py tests/test_bad_input.py tests/gpu/test_gpu_parity.py tests/test_strict_tools_auto.py"
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  bash benchmarks/results/gpu-2026-12-06-session36/call3.sh
  export CAP=170; LIM=160
else
  export CAP=300; LIM=240
fi
source benchmarks/results/gpu-2026-12-06-session38/lib.sh
nvidia-smi --query-gpu=name --format=csv,noheader | tee -a $S
# shellcheck disable=SC2086
step spec_tests $LIM python -m pytest -q -p no:cacheprovider $TESTS
echo "spec tests: $(tail -1 $OUT/spec_tests.txt)" | tee -a $S
exit 0
