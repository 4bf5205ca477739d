#!/bin/bash
# Session 46, call 6 (carry ["wheels"]; run from the repo root at 3093b75, the LoRA hook as the matmul plus one Triton
# expand; /tmp/r_old the tree before any of it, e0a513b): the LoRA GPU tests, then ShareGPT-like throughput with every
# request on a rank-16 adapter under 4 ids, new and old alternating (call 5's command).
set -uo pipefail
export CAP=${CAP:-190}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step gpu_lora 80 python -m pytest -q -p no:cacheprovider -x tests/gpu/test_gpu_lora.py tests/kernels/test_lora_triton.py
python benchmarks/gpu/make_lora_adapter.py $M /tmp/lora16 --rank 16 >/dev/null 2>&1
L="--enable-lora --max-loras 4 --max-lora-rank 16 --lora-path /tmp/lora16"
step tp_lora_new 45 $CLI $TP $L
(cd /tmp/r_old && PYTHONPATH="/tmp/r_old:/tmp/site" step tp_lora_old 25 $CLI $TP $L)
step tp_lora_new2 25 $CLI $TP $L
cat $S
exit 0
