#!/bin/bash
# Session 32, call 8 (for the next session's choice; nothing here changes code): the FP8-cache attention kernel's
# launch variants on an H100 (fp8_attention_sweep.py --probe; the batch-256 FP8 step's largest part), and where the
# batch-1 verify-4 step's time goes on an H100 (profile_steps.py timelines, verify against decode).
set -uo pipefail
export CAP=290
source benchmarks/results/gpu-2026-12-05-session32/lib.sh
step attn_probe 110 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs 3000 --probe
tail -25 $OUT/attn_probe.txt | tee -a $S
SC='{"max_model_len": 2048, "speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}}'
step prof_verify 70 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --timeline --engine-args "$SC"
step prof_decode 60 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --timeline \
  --engine-args '{"max_model_len": 2048}'
grep -A12 "== batch" $OUT/prof_verify.txt $OUT/prof_decode.txt | tee -a $S
exit 0
