#!/bin/bash
# Session 30, call 1 (starts are scarce: one call does the essentials). (1) int4_gemv_sweep.py, each candidate checked
# against dequantize + matmul first: decodes 0/1/2 and PDL of the small-M GEMV; at M 16 and 64 the dot kernel's rule,
# its decode 1 ("tile") and decode 2 ("wt": the weights as wgmma's register operand) and other decode-2 tiles
# (winners to $OUT/w4.json after every M). (2) issue 12's batch-1 / batch-64 decode steps (Llama-3-8B shape, dummy
# weights): bf16, W4A16 (GPTQ layout) with the sweep's winners (both tables), and W4A16 with the committed tables.
# (3) GPU tests of the new kernels. Usage: bash call1.sh [full|short|min].
set -uo pipefail
MODE=${1:-full}
case $MODE in
  full) MS="1 2 4 16 64"; SWEEP_S=260 ;;
  short) MS="1 2 64"; SWEEP_S=200 ;;
  *) MS="1 64"; SWEEP_S=150 ;;
esac
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call1_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm --format=csv,noheader | tee $S
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $S
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null &
# shellcheck disable=SC2086
timeout $SWEEP_S python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms $MS > $OUT/call1_sweep.txt 2>&1
echo "sweep rc=$?" | tee -a $S
cp $OUT/w4.json /tmp/w4.json 2>/dev/null
grep -E "bandwidth|^M=|floor|step linears|sweep took" $OUT/call1_sweep.txt | tee -a $S
grep -A16 "CHOOSE" $OUT/call1_sweep.txt | tee -a $S
wait
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
run() {  # name, command...
  local name=$1; shift
  timeout "$T" "$@" > $OUT/call1_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call1_lat_$name.txt | tr '\n' ' ')" | tee -a $S
}
CLI="python -m pagoda.entrypoints.cli --log-level WARNING"
# shellcheck disable=SC2086
T=90 run bf16 $CLI $LAT
# shellcheck disable=SC2086
[ -f /tmp/w4.json ] && T=80 run gptq_sweep python benchmarks/gpu/with_gemv_table.py --w4-table /tmp/w4.json \
  -- --log-level WARNING $LAT --quantization gptq
# shellcheck disable=SC2086
[ "$MODE" = full ] && T=70 run gptq_table $CLI $LAT --quantization gptq
timeout 60 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_int4_kernels.py -k "dot or bf16" \
  > $OUT/call1_tests.txt 2>&1
echo "tests: $(tail -1 $OUT/call1_tests.txt)" | tee -a $S
