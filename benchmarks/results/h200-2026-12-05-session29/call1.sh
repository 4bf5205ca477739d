#!/bin/bash
# Session 29, call 1 (one call must do the essentials: starts were scarce): (1) int4_gemv_sweep.py, each candidate
# checked against dequantize + matmul first (a flushed denormal decode would fail there): decodes 0/1/2 and PDL
# candidates of the small-M GEMV, the dot kernel with one tl.dot per K tile ("tile") beside its rule at M = 16 and
# 64 (winners to $OUT/w4.json and /tmp/w4.json); (2) issue 12's batch-1 / batch-64 decode steps (Llama-3-8B shape,
# dummy weights): bf16, W4A16 (GPTQ layout) with the sweep's winners plus the dot kernel's tile variant, and W4A16
# with the committed tables. Usage: bash call1.sh [full|short|min] (short: M 1, 2, 4, 64 and no committed-table latency
# run; min: M 1 and 2, the same latency runs as short; for a nearly spent device budget).
set -uo pipefail
MODE=${1:-full}
case $MODE in
  full) MS="1 2 4 16 64"; SWEEP_S=250 ;;
  short) MS="1 2 4 64"; SWEEP_S=200 ;;
  *) MS="1 2"; SWEEP_S=150 ;;
esac
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call1_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm --format=csv,noheader | tee $S
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null &
# shellcheck disable=SC2086
timeout $SWEEP_S python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms $MS > $OUT/call1_sweep.txt 2>&1
echo "sweep rc=$?" | tee -a $S
cp $OUT/w4.json /tmp/w4.json 2>/dev/null
grep -E "bandwidth|^M=|floor|step linears|sweep took" $OUT/call1_sweep.txt | tee -a $S
grep -A14 "CHOOSE" $OUT/call1_sweep.txt | tee -a $S
wait
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
run() {  # name, command...
  local name=$1; shift
  timeout "$T" "$@" > $OUT/call1_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call1_lat_$name.txt | tr '\n' ' ')" | tee -a $S
}
CLI="python -m pagoda.entrypoints.cli --log-level WARNING"
# shellcheck disable=SC2086
T=100 run bf16 $CLI $LAT
# shellcheck disable=SC2086
[ -f /tmp/w4.json ] && T=80 run gptq_sweep_tile python benchmarks/gpu/with_gemv_table.py --w4-table /tmp/w4.json \
  --w4-dot-tile -- --log-level WARNING $LAT --quantization gptq
# shellcheck disable=SC2086
[ "$MODE" = full ] && T=70 run gptq_table $CLI $LAT --quantization gptq
