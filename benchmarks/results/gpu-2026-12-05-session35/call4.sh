#!/bin/bash
# Session 35, call 4 (the same H200, warm; ~260 device s left): the verify-4 A/B once more as split, base, base, split
# (calls 1 and 3 each had their second run ~0.1-0.3 ms slower, whichever arm it was).
set -uo pipefail
export CAP=230
source benchmarks/results/gpu-2026-12-05-session34/lib.sh
J=benchmarks/results/gpu-2026-12-05-session35/call1_sweep5.json
for arm in split1 base1 base2 split2; do
  if [[ $arm == split* ]]; then export PAGODA_CLI="python benchmarks/gpu/with_gemv_table.py --table $J --"; else unset PAGODA_CLI; fi
  step spec_$arm 55 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec_$arm
  echo "$arm: $(grep -E '^batch 1' $OUT/spec_$arm.txt)" | tee -a $S
done
exit 0
