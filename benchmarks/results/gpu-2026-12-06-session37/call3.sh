#!/bin/bash
# Session 37, call 3 (carry ["wheels"]): the bf16 GEMV at 5 rows (issue 17's batch-1 verify-4) on an H100, whose
# 5-row entries came from an H200 (session 35): the sweep, then the verify-4 step with the committed table and with
# this card's winners over it (spec_verify_bench.sh through with_gemv_table.py), committed / winners / committed.
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-06-session37/lib.sh
step sweep5 120 python benchmarks/gpu/dense_gemv_sweep.py --shapes llama3-8b --rows 5 --json $OUT/d5.json
grep -E "^ *\(?5|cuBLAS|CHOOSE|GemvRule|floor" $OUT/sweep5.txt | head -30 | tee -a $S
step sv_base1 170 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv1
grep -E "^batch [0-9]+: decode" $OUT/sv_base1.txt | sed 's/^/committed: /' | tee -a $S
if [ -f $OUT/d5.json ]; then
  PAGODA_CLI="python benchmarks/gpu/with_gemv_table.py --table $OUT/d5.json --" step sv_win 170 \
    bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv2
  grep -E "^batch [0-9]+: decode" $OUT/sv_win.txt | sed 's/^/H100 winners: /' | tee -a $S
fi
exit 0
