#!/bin/bash
# Session 45, call 5 (NOT RUN: no H200 was lent; for a later session) (carry ["wheels"], a `git archive HEAD` copy): on an H200, issue 12's 4-bit one-row tables,
# never tuned there (the sweep at 1 and 64 rows, W4A16 decode steps with the committed tables and the winners);
# on an H100, the GPU pooling tests (this session's pooling changes).
set -uo pipefail
export CAP=${CAP:-380}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  step sweep 170 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 1 64
  grep -E "step linears|floor|took" $OUT/sweep.txt >> $S
  sed -n '/CHOOSE/,/END CHOOSE/p' $OUT/sweep.txt >> $S
  for q in none gptq; do
    extra=""; [ $q = none ] || extra="--quantization $q"
    # shellcheck disable=SC2086
    step lat_$q 60 $CLI $LAT $extra
  done
  # shellcheck disable=SC2086
  [ -f $OUT/w4.json ] && step lat_gptq_winners 60 python benchmarks/gpu/with_gemv_table.py --w4-table $OUT/w4.json \
    -- --log-level WARNING $LAT --quantization gptq
else
  step gpu_pooling 120 python -m pytest -q -p no:cacheprovider --timeout 100 tests/gpu/test_gpu_pooling.py
fi
cat $S
exit 0
