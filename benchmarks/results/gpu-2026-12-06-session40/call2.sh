#!/bin/bash
# Session 40, call 2 (carry ["wheels"]): call 1 ran the CPU-suite speculative tests on the GPU in one process, where
# engines left alive by earlier tests took the card (each new engine takes 90 % of what is free) and the later tests
# ran out of memory. Here each file or test runs in its own process: the GPU tests, then the draft-model test alone
# (the draft now loads inside the target's gpu_memory_utilization share).
set -uo pipefail
export CAP=330
source benchmarks/results/gpu-2026-12-06-session38/lib.sh
P="python -m pytest -q -p no:cacheprovider"
step gpu_spec 150 $P tests/gpu/test_gpu_spec_verify_graphs.py tests/gpu/test_gpu_spec_no_sync.py
echo "gpu spec tests: $(tail -1 $OUT/gpu_spec.txt)" | tee -a $S
step gpu_parity 80 $P tests/gpu/test_gpu_parity.py
echo "gpu parity: $(tail -1 $OUT/gpu_parity.txt)" | tee -a $S
step draft 60 $P "tests/test_spec_decode.py::test_draft_model_greedy_identical" tests/test_spec_draft_shadows_freed.py
echo "draft model: $(tail -1 $OUT/draft.txt)" | tee -a $S
exit 0
