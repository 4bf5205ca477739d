#!/bin/bash
# Session 35, call 1 (issue 17's batch-1 verify step): the bf16 GEMV's new split-K tensor-core rules on the GPU —
# the kernel tests compiled for the card, the 5-row sweep of the 8B linears against cuBLAS, then the verify-4 step
# with the committed table and with the sweep's winners (same call). Run from the repository root; carry ["wheels"].
set -uo pipefail
export CAP=580
source benchmarks/results/gpu-2026-12-05-session34/lib.sh
step tests 150 python -m pytest -q -p no:cacheprovider tests/kernels/test_dense_gemv.py tests/kernels/test_pdl_protocol.py
tail -2 $OUT/tests.txt | tee -a $S
step sweep5 150 python benchmarks/gpu/dense_gemv_sweep.py --shapes llama3-8b --rows 5 --json $OUT/sweep5.json
grep -E "m=5|copy" $OUT/sweep5.txt | tee -a $S
step spec_base 160 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec_base
tail -2 $OUT/spec_base.txt | tee -a $S
PAGODA_CLI="python benchmarks/gpu/with_gemv_table.py --table $OUT/sweep5.json --" \
  step spec_split 160 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec_split
tail -2 $OUT/spec_split.txt | tee -a $S
exit 0
