#!/bin/bash
# Session 37, call 5 (carry ["wheels"], on the H100 that call 2's H200 request got): this session's last GPU tests.
source benchmarks/results/gpu-2026-12-06-session37/lib.sh >/dev/null 2>&1
python -m pytest -q -p no:cacheprovider tests/kernels/test_dense_gemv.py tests/gpu/test_gpu_spec_verify_graphs.py 2>&1 | tail -4
# output: 82 passed, 1 skipped in 47.88s (the skip: the sweep's --smoke mode, CPU-interpreter only)
