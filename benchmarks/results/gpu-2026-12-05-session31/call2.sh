#!/bin/bash
# Session 31, call 2 (carry ["wheels"]; right after call 1 on the same warm machine, else it rebuilds what it needs):
# issue 12's decode steps, bf16 / W4A16 (GPTQ layout) paired (the default now) / W4A16 with every dot and dense-copy
# rule unpaired (the fp32 decode: the code before this session) / W4A16 with call 1's sweep winners / FP8.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d /tmp/site/fastapi ] || python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn \
  uvloop httptools msgspec pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
S=$OUT/call2_summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee $S
M=/tmp/llama3-8b-shape
[ -f $M/config.json ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
python - <<'PY'
import dataclasses, json
from pagoda.quantization.kernels import triton_wna16 as tw
t = {str(k): dataclasses.asdict(dataclasses.replace(r, paired=False)) for k, r in tw.INT4_TABLE.items()
     if r.kind in ("dot", "deq")}
json.dump({"int4_table": t, "ms": [64]}, open("/tmp/unpaired.json", "w"))
PY
LAT="bench latency --model $M --load-format dummy --batch-size 1 64 --input-len 512 --output-len 32"
run() {  # name, then the command's arguments
  local name=$1; shift
  # shellcheck disable=SC2086
  timeout 80 python "$@" > $OUT/call2_lat_$name.txt 2>&1
  echo "latency $name: $(grep -E '^batch' $OUT/call2_lat_$name.txt | tr '\n' ' ')" | tee -a $S
}
run bf16 -m pagoda.entrypoints.cli --log-level WARNING $LAT
run gptq_paired -m pagoda.entrypoints.cli --log-level WARNING $LAT --quantization gptq
run gptq_unpaired benchmarks/gpu/with_gemv_table.py --w4-table /tmp/unpaired.json -- --log-level WARNING $LAT --quantization gptq
[ -f /tmp/w4_call1.json ] && run gptq_winners benchmarks/gpu/with_gemv_table.py --w4-table /tmp/w4_call1.json -- \
  --log-level WARNING $LAT --quantization gptq
run fp8 -m pagoda.entrypoints.cli --log-level WARNING $LAT --quantization fp8
