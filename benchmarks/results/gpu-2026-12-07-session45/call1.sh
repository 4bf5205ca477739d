#!/bin/bash
# Session 45, call 1 (carry ["wheels"], run from a `git archive HEAD` copy): LoRA under CUDA graphs. The LoRA GPU
# test (graphs and eager against HF with the adapters merged), then ShareGPT-like throughput of the 8B shape:
# the base engine, a LoRA engine whose requests use no adapter, a LoRA engine with every request on a rank-16
# adapter under 4 ids (--max-loras 4), and the same eager (the graphs' gain), arms alternating where time allows.
set -uo pipefail
export CAP=${CAP:-580}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
P="python -m pytest -q -p no:cacheprovider -x --timeout 150"
step gpu_lora 150 $P tests/gpu/test_gpu_lora.py
python benchmarks/gpu/make_lora_adapter.py $M /tmp/lora16 --rank 16 >/dev/null 2>&1
L="--enable-lora --max-loras 4 --max-lora-rank 16"
step tp_base 70 $CLI $TP
step tp_lora_none 70 $CLI $TP $L
step tp_lora_r16 90 $CLI $TP $L --lora-path /tmp/lora16
step tp_base2 70 $CLI $TP
step tp_lora_r16_2 90 $CLI $TP $L --lora-path /tmp/lora16
step tp_lora_r16_eager 150 $CLI $TP $L --lora-path /tmp/lora16 --enforce-eager
cat $S
exit 0
