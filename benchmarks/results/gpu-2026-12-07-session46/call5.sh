#!/bin/bash
# Session 46, call 5 (carry ["wheels"]; run from the repo root at HEAD, with the LoRA Triton pair; /tmp/r_old the
# commit before it): the LoRA GPU tests (graphs and eager against HF with the adapters merged; the Triton pair
# compiled against the torch path), then ShareGPT-like throughput of the 8B shape: the base engine, LoRA with every
# request on a rank-16 adapter under 4 ids with the Triton pair (new) and with the torch ops (old), alternating.
set -uo pipefail
export CAP=${CAP:-420}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step gpu_lora 150 python -m pytest -q -p no:cacheprovider -x tests/gpu/test_gpu_lora.py tests/kernels/test_lora_triton.py
python benchmarks/gpu/make_lora_adapter.py $M /tmp/lora16 --rank 16 >/dev/null 2>&1
L="--enable-lora --max-loras 4 --max-lora-rank 16 --lora-path /tmp/lora16"
step tp_lora_new 90 $CLI $TP $L
(cd /tmp/r_old && PYTHONPATH="/tmp/r_old:/tmp/site" step tp_lora_old 90 $CLI $TP $L)
step tp_base 70 $CLI $TP
step tp_lora_new2 80 $CLI $TP $L
(cd /tmp/r_old && PYTHONPATH="/tmp/r_old:/tmp/site" step tp_lora_old2 80 $CLI $TP $L)
cat $S
exit 0
