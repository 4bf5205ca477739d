#!/bin/bash
# Session 33, call 6 (the command line it ran): this session's main under the GPU kernel tests, with session 32's
# FP8-rows edits that had not run on a GPU (FP8_ROW_ELEMS table, fp8_rows_wanted in the decoder layer, PDL entries).
export CAP=200; source benchmarks/results/gpu-2026-12-05-session33/lib.sh; step tests 170 python -m pytest -q -x tests/gpu/test_gpu_w8a8.py tests/kernels/test_fused_kernels.py tests/kernels/test_pdl_protocol.py tests/kernels/test_triton_attention.py tests/kernels/test_kv_layouts.py; tail -5 $OUT/tests.txt; exit 0
