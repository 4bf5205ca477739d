#!/bin/bash
# Session 47, call 3 (carry ["wheels"]; the working tree: the one-row GEMV with a PANEL switch for its weight
# addressing): does the [K/8, N] layout's short runs (a K tile = 16 runs of 256-512 B) cost the one-row GEMV its
# bandwidth? The same rules on the same codes stored as contiguous column panels, µs per linear. Then the LoRA GPU
# tests (session 46's re-read mend db2c4bf never ran on a GPU).
set -uo pipefail
export CAP=${CAP:-330}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step panel_probe 200 python benchmarks/gpu/w4_panel_probe.py
grep -E "floor .* now|step of linears|copy bandwidth" $OUT/panel_probe.txt >> $S
step gpu_lora 100 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_lora.py tests/kernels/test_lora_triton.py
cat $S
exit 0
