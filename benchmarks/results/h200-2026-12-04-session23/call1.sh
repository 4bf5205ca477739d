#!/bin/bash
# Session 23, call 1: the CUDA-core several-row GEMV (dense_gemv._dense_gemv_rows_kernel: one accumulator per row,
# each thread's 16 contiguous bytes summed in registers, no cross-thread work in the K loop).
# (1) dense_gemv_sweep.py on the Llama-3-8B linears at 2, 4, 5 and 8 rows against cuBLAS and the tensor-core rules;
# (2) the GEMV tests compiled for the GPU; (3) the batch-1 verify-4 step (issue 17) with the code's table (cuBLAS for
# the 5-row layer linears) and with the sweep's winners (with_gemv_table.py), plain decode alongside.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
ROOT=$PWD
export PYTHONPATH="$ROOT:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 220 python benchmarks/gpu/dense_gemv_sweep.py --shapes llama3-8b --rows 2 4 5 8 --json $OUT/call1_sweep.json \
  2>&1 | grep -v Warning | tee $OUT/call1_sweep.txt | grep -E "m=|CHOOSE|\(" 
python - $OUT/call1_sweep.json $OUT/call1_merged.json <<'PY'
import dataclasses, json, sys
sys.path.insert(0, "benchmarks/gpu")
from with_gemv_table import merged_table
table = merged_table(sys.argv[1], False)
json.dump([{"m": m, "n": n, "k": k, "cublas_us": 1.0, "gemv_us": 0.0, "rule": list(dataclasses.astuple(r))}
           for (m, n, k), r in table.items()], open(sys.argv[2], "w"))
print(f"merged table: {len(table)} entries")
PY
timeout 120 python -m pytest -q -p no:cacheprovider tests/kernels/test_dense_gemv.py tests/kernels/test_pdl_protocol.py \
  > $OUT/call1_tests.txt 2>&1; echo "tests rc=$?"; tail -2 $OUT/call1_tests.txt
lat() {  # $1: arm name, $2: CLI prefix, rest: extra flags
  local name=$1 cli=$2; shift 2
  # shellcheck disable=SC2086
  timeout 100 $cli --log-level WARNING bench latency --model $M --load-format dummy --batch-size 1 --input-len 512 \
    --output-len 32 --max-model-len 2048 --max-num-seqs 32 "$@" > $OUT/call1_lat_$name.txt 2>&1
  echo "$name: $(grep -E '^batch' $OUT/call1_lat_$name.txt | tail -1)"
}
BASE="python -m pagoda.entrypoints.cli"
NEW="python benchmarks/gpu/with_gemv_table.py --table $OUT/call1_sweep.json --"
SPEC='{"method": "synthetic", "num_speculative_tokens": 4}'
for i in 1 2; do
  lat plain_$i "$BASE"
  lat verify_base_$i "$BASE" --speculative-config "$SPEC"
  lat verify_new_$i "$NEW" --speculative-config "$SPEC"
done
