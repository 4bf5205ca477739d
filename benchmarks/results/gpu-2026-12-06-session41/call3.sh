#!/bin/bash
# Session 41, call 3 (same warm machine, carry ["wheels"]): with the helpers' model changes in the tree (per-arch
# biases, GELU MLPs off the fused SiLU kernel, sliding-window rules): the window/soft-cap and parity GPU tests again,
# then the MoE file call 1 stopped at 150 s.
set -uo pipefail
export CAP=500
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 240"
mkdir -p /tmp/logs3
step gpu_window_softcap 110 $P tests/gpu/test_gpu_window_softcap.py
step gpu_parity 80 $P tests/gpu/test_gpu_parity.py
step gpu_moe 290 $P tests/gpu/test_gpu_moe.py
mv $OUT/gpu_*.txt /tmp/logs3/ 2>/dev/null; tar czf $OUT/call3_logs.tgz -C /tmp/logs3 .
cat $S
exit 0
