#!/bin/bash
# Session 31, call 4 (carry ["wheels"]): the final tables (SMALL_M_TABLE to one row, INT4_TABLE[128], the new
# INT4_SHAPE_TABLE) -- GPU tests, the sweep at 64/128 rows (plus block_m 32 candidates), then issue 12's decode
# steps in one call: bf16, W4A16 with the tree's tables, W4A16 with session 30's tables (paired decode on in both),
# FP8.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d /tmp/site/fastapi ] || python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn \
  uvloop httptools msgspec pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call4_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $S
M=/tmp/llama3-8b-shape
[ -f $M/config.json ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null &
timeout 120 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_int4_kernels.py \
  tests/kernels/test_int_weight_triton.py > $OUT/call4_tests.txt 2>&1
echo "tests: $(tail -1 $OUT/call4_tests.txt)" | tee -a $S
grep -E "^FAILED" $OUT/call4_tests.txt | head | tee -a $S
timeout 120 python benchmarks/gpu/int4_gemv_sweep.py --ms 64 128 > $OUT/call4_sweep.txt 2>&1
echo "sweep rc=$?" | tee -a $S
grep -E "step linears|^  [a-z_]+ +floor" $OUT/call4_sweep.txt | tee -a $S
wait
python - <<'PY'
import json
g1 = {"kind": "gemv", "block_n": 64, "block_m": 1, "waves": 8, "num_warps": 2, "pdl": True}
before = {"small": {"1": g1, "2": {"kind": "gemv", "block_n": 64, "block_m": 2, "prefetch": 2}},
          "large": {"1": g1, "2": {"kind": "gemv", "block_n": 64, "block_m": 2, "num_warps": 8}},
          "int4_table": {"64": {"kind": "dot", "block_n": 128, "block_m": 64},
                         "128": {"kind": "dot", "block_n": 128, "block_m": 128, "waves": 1, "num_warps": 8,
                                 "num_stages": 4}},
          "int4_shapes": {}, "ms": [1]}
json.dump(before, open("/tmp/session30_tables.json", "w"))
PY
LAT="bench latency --model $M --load-format dummy --batch-size 1 2 64 --input-len 512 --output-len 32"
run() {  # name, then the command's arguments
  local name=$1; shift
  # shellcheck disable=SC2086
  timeout 85 python "$@" > $OUT/call4_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call4_lat_$name.txt | tr '\n' ' ')" | tee -a $S
}
run bf16 -m pagoda.entrypoints.cli --log-level WARNING $LAT
run gptq_tree -m pagoda.entrypoints.cli --log-level WARNING $LAT --quantization gptq
run gptq_s30_tables benchmarks/gpu/with_gemv_table.py --w4-table /tmp/session30_tables.json -- \
  --log-level WARNING $LAT --quantization gptq
run fp8 -m pagoda.entrypoints.cli --log-level WARNING $LAT --quantization fp8
