#!/bin/bash
# Session 38, call 3 (carry ["wheels"]): each kernel's own time in the batch-1 verify-4 step and the batch-1 decode step
# (programmatic dependent launch off, so that no kernel's time holds its wait for the one before; by launch grid),
# to split the verify's ~0.55 ms of device time over a decode step (call 1's timeline) into its kernels.
set -uo pipefail
export CAP=560
source benchmarks/results/gpu-2026-12-06-session38/lib.sh
SC='{"max_model_len": 2048, "speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}}'
PAGODA_PDL=0 step grid_verify 90 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --timeline --by-grid \
  --engine-args "$SC"
PAGODA_PDL=0 step grid_decode 90 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 20 --timeline --by-grid \
  --engine-args '{"max_model_len": 2048}'
for f in grid_verify grid_decode; do sed -n '/^==/,$p' $OUT/$f.txt | grep -v Warn | head -45 | sed "s/^/$f: /" | tee -a $S; done
exit 0
