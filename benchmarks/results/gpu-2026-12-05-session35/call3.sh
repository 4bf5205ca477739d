#!/bin/bash
# Session 35, call 3 (the same H200, warm; ~360 device s left): the verify-4 A/B of call 1 again in the order split,
# base (call 1 ran base, split): the committed GEMV table against the 5-row sweep's winners (call 1's sweep5.json,
# carried in the tree).
set -uo pipefail
export CAP=300
source benchmarks/results/gpu-2026-12-05-session34/lib.sh
J=benchmarks/results/gpu-2026-12-05-session35/call1_sweep5.json
PAGODA_CLI="python benchmarks/gpu/with_gemv_table.py --table $J --" \
  step spec_split 110 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec_split
tail -2 $OUT/spec_split.txt | tee -a $S
step spec_base 110 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec_base
tail -2 $OUT/spec_base.txt | tee -a $S
exit 0
