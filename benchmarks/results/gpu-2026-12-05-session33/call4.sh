#!/bin/bash
# Session 33, call 4 (run inline on the warm machine of call 3): issue 12's decode steps with this session's code
# (Triton KV layout NHD_BY_HEAD, FP8_ROW_TILES on), bench latency at batch 1/2/64, bf16 / FP8 / GPTQ W4A16.
export CAP=330; source benchmarks/results/gpu-2026-12-05-session33/lib.sh; for q in none fp8 gptq; do A=""; [ $q != none ] && A="--quantization $q"; step lat_$q 110 $CLI $LAT $A; grep -iE "batch|ms" $OUT/lat_$q.txt | tail -4 | sed "s/^/$q: /" | tee -a $S; done; exit 0
