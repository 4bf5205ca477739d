#!/bin/bash
# Session 49, call 1: session 47's next_call.sh as it was (w4_panel_probe.py was removed after this call; see 42d13c5^). Carry ["wheels"], the working tree:
# the panel probe (does the one-row 4-bit GEMV lose its bandwidth to the [K/8, N] layout's short runs?), the
# LoRA GPU tests (session 46's mend db2c4bf never ran on a GPU), and on an H200 the 4-bit sweep its tables never had
# (session 46's next_call.sh).
set -uo pipefail
export CAP=${CAP:-560}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step panel_probe 200 python benchmarks/gpu/w4_panel_probe.py
grep -E "floor .* now|step of linears|copy bandwidth" $OUT/panel_probe.txt >> $S
step gpu_lora 100 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_lora.py tests/kernels/test_lora_triton.py
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  step sweep 200 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 1 2 16 64 128
  grep -E "step linears|floor|took" $OUT/sweep.txt >> $S
  sed -n '/CHOOSE/,/END CHOOSE/p' $OUT/sweep.txt >> $S
fi
cat $S
exit 0
