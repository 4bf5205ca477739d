#!/bin/bash
# Session 31, call 3 (carry ["wheels"]): the exactness test's fixed precondition; the sweep at 1-128 rows with the
# paired decode in play (dot rules at fewer split-K waves: at 64+ rows the fp32 workspace outweighs the weights);
# then W4A16 latency with the sweep's winners against the tables in the tree, same call.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d /tmp/site/fastapi ] || python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn \
  uvloop httptools msgspec pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call3_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $S
M=/tmp/llama3-8b-shape
[ -f $M/config.json ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null &
timeout 100 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_int4_kernels.py > $OUT/call3_tests.txt 2>&1
echo "tests: $(tail -1 $OUT/call3_tests.txt)" | tee -a $S
timeout 300 python benchmarks/gpu/int4_gemv_sweep.py --json $OUT/w4.json --ms 1 2 4 8 16 64 128 > $OUT/call3_sweep.txt 2>&1
echo "sweep rc=$?" | tee -a $S
grep -E "step linears|INT4_TABLE|^    [0-9]+: Rule|took" $OUT/call3_sweep.txt | tee -a $S
sed -n '/CHOOSE/,/END CHOOSE/p' $OUT/call3_sweep.txt >> $S
wait
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
run() {  # name, then the command's arguments
  local name=$1; shift
  # shellcheck disable=SC2086
  timeout 80 python "$@" > $OUT/call3_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call3_lat_$name.txt | tr '\n' ' ')" | tee -a $S
}
run gptq_tree -m pagoda.entrypoints.cli --log-level WARNING $LAT --quantization gptq
[ -f $OUT/w4.json ] && run gptq_winners benchmarks/gpu/with_gemv_table.py --w4-table $OUT/w4.json -- \
  --log-level WARNING $LAT --quantization gptq
