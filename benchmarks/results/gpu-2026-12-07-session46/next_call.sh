#!/bin/bash
# For a later session (NOT RUN in session 46: its device time was spent) (carry ["wheels"], a `git archive HEAD`
# copy): what session 46's changes were not measured on. Any card: the GGUF GPU tests (4-bit GGUF weights now take the
# swapped dot at 2-128 rows) and a second pair of the LoRA expand's throughput A/B needs the tree before 3093b75 at
# /tmp/r_old (skipped without it). On an H200 (never tuned there): the 4-bit sweep at 1, 2, 16, 64 and 128 rows with
# the swapped dot's candidates, then W4A16 decode steps with the committed tables and with the sweep's winners.
set -uo pipefail
export CAP=${CAP:-560}
source benchmarks/results/gpu-2026-12-06-session41/lib.sh
step gpu_gguf 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_gguf.py tests/gpu/test_gpu_int4_kernels.py
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  step sweep 200 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 1 2 16 64 128
  grep -E "step linears|floor|took" $OUT/sweep.txt >> $S
  sed -n '/CHOOSE/,/END CHOOSE/p' $OUT/sweep.txt >> $S
  LAT="bench latency --model $M --load-format dummy --batch-size 64 1 --input-len 512 --output-len 32"
  # shellcheck disable=SC2086
  step lat_bf16 100 $CLI $LAT
  # shellcheck disable=SC2086
  step lat_gptq 100 $CLI $LAT -q gptq
  # shellcheck disable=SC2086
  [ -f $OUT/w4.json ] && step lat_gptq_winners 100 python benchmarks/gpu/with_gemv_table.py --w4-table $OUT/w4.json \
    -- --log-level WARNING $LAT -q gptq
elif [ -d /tmp/r_old ]; then
  python benchmarks/gpu/make_lora_adapter.py $M /tmp/lora16 --rank 16 >/dev/null 2>&1
  L="--enable-lora --max-loras 4 --max-lora-rank 16 --lora-path /tmp/lora16"
  for r in 1 2; do
    step tp_lora_new_$r 90 $CLI $TP $L
    (cd /tmp/r_old && PYTHONPATH="/tmp/r_old:/tmp/site" step tp_lora_old_$r 90 $CLI $TP $L)
  done
  step tp_base 70 $CLI $TP
fi
cat $S
exit 0
