#!/bin/bash
# Session 38, call 4 (carry ["wheels"]): call 3 found the 5-row linears of the batch-1 verify 3-5 us a layer slower
# than the one-row GEMVs on the same weights (gate_up 81.1 against 76.4 us, o 16.3 / ~12, qkv 21.1 / 18.2, down on
# cuBLAS 44.0 / ~41). The 5-row sweep with new tensor-core candidates (one resident wave, deeper pipelines), then the
# verify bench at batch 1 with the committed tables and with the sweep's winners, alternating.
set -uo pipefail
export CAP=570
source benchmarks/results/gpu-2026-12-06-session38/lib.sh
step sweep5 170 python benchmarks/gpu/dense_gemv_sweep.py --shapes llama3-8b --rows 5 --json $OUT/d5.json
grep -E "m=5|CHOOSE|GemvRule" $OUT/sweep5.txt | head -20 | tee -a $S
for r in 1 2; do
  BATCHES=1 step sv_c$r 100 bash benchmarks/gpu/spec_verify_bench.sh /tmp/svc$r
  grep -E "^batch 1: decode" $OUT/sv_c$r.txt | sed "s/^/committed $r: /" | tee -a $S
  if [ -f $OUT/d5.json ]; then
    BATCHES=1 PAGODA_CLI="python benchmarks/gpu/with_gemv_table.py --table $OUT/d5.json --" step sv_n$r 100 \
      bash benchmarks/gpu/spec_verify_bench.sh /tmp/svn$r
    grep -E "^batch 1: decode|GEMV table" $OUT/sv_n$r.txt | sed "s/^/winners $r: /" | tee -a $S
  fi
done
exit 0
