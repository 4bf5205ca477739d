#!/bin/bash
# Session 38, call 1 (carry ["wheels"]): where the batch-1 verify-4 step's time goes now (issue 17: <= 1.15x a
# decode step), after sessions 35-37's 5-row GEMV rules: its device timeline and its host phases, then the verify
# bench with the committed tables and with the 5-row down_proj on the tensor-core GEMV (a tie with cuBLAS in session
# 37's sweep, 42.7 us both, but the GEMV takes part in programmatic dependent launch and cuBLAS does not).
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-06-session38/lib.sh
SC='{"max_model_len": 2048, "speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}}'
step prof_verify 80 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --timeline --engine-args "$SC"
grep -E "^==|timeline|ms +[0-9]+x" $OUT/prof_verify.txt | head -24 | tee -a $S
step phases_verify 80 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 40 --phases --engine-args "$SC"
sed -n '/host phases/,$p' $OUT/phases_verify.txt | head -30 | tee -a $S
step sv_base 170 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv1
grep -E "^batch [0-9]+: decode" $OUT/sv_base.txt | sed 's/^/committed: /' | tee -a $S
PAGODA_CLI="python benchmarks/gpu/with_gemv_table.py --entry 5,4096,14336=64,128,4,1,4,4 --" step sv_down 170 \
  bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv2
grep -E "^batch [0-9]+: decode" $OUT/sv_down.txt | sed 's/^/down on the GEMV: /' | tee -a $S
exit 0
