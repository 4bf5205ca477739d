#!/bin/bash
# Session 41's device calls: session 32's `step` and variables, with the carried wheels (`wheels/`, the server's
# packages, xgrammar and gguf, none of what the machine's image already has) installed without dependency resolution.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
[ -d /tmp/site/fastapi ] || python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site:$PWD/benchmarks/gpu"
M=/tmp/llama3-8b-shape
[ -f $M/config.json ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null 2>&1
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | tee -a $S
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $S
step() {
  local name=$1 limit=$2; shift 2
  local now; now=$(date +%s)
  if (( now - T0 + limit > ${CAP:-580} )); then echo "SKIPPED $name (at $((now - T0)) s)" | tee -a $S; return; fi
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s: $(tail -1 $OUT/$name.txt)" >> $S
}
CLI="python -m pagoda.entrypoints.cli --log-level WARNING"
LAT="bench latency --model $M --load-format dummy --batch-size 1 2 64 --input-len 512 --output-len 32"
TP="bench throughput --model $M --load-format dummy --dataset sharegpt --num-prompts 300"
