#!/bin/bash
# Session 22, call 4: the FP8 cache's fp16 dots with the query scaled by a constant 2^-4 (116 registers a thread, as
# without scaling; a factor from the tile's absmax took 146 and a program per SM: calls 1-3):
# (1) fp8_attention_sweep.py --probe (stages, warps, a register cap); (2) the FP8 KV tests compiled for the GPU;
# (3) issue 12's ShareGPT-like throughput, FP8 weights + FP8 KV (new, and base = ab_base/, 5cd1d82) against bf16,
# arms alternating.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
ROOT=$PWD
export PYTHONPATH="$ROOT:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
BW=$(python -c "import sys; sys.path.insert(0, 'benchmarks/gpu'); from bandwidth import device_copy_bandwidth as f; \
print(round(f(1 << 28) / 1e9))")
echo "copy bandwidth $BW GB/s" | tee $OUT/call4_probe.txt
timeout 150 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs $BW --probe 2>&1 | grep -v Warning \
  | tee -a $OUT/call4_probe.txt
timeout 100 python -m pytest -q -p no:cacheprovider tests/kernels/test_kv_fp8_kernels.py tests/gpu/test_gpu_kv_fp8.py \
  > $OUT/call4_tests.txt 2>&1; echo "tests rc=$?"; tail -2 $OUT/call4_tests.txt
for i in 1 2; do
  for arm in new bf16 base; do
    dir=$ROOT; [ $arm = base ] && dir=$ROOT/ab_base
    extra="--quantization fp8 --kv-cache-dtype fp8"; [ $arm = bf16 ] && extra=""
    (cd $dir && PYTHONPATH="$dir:/tmp/site" timeout 110 python -m pagoda.entrypoints.cli --log-level WARNING bench \
      throughput --model $M --load-format dummy --dataset sharegpt --num-prompts 300 $extra) > $OUT/call4_tp_${arm}_$i.txt 2>&1
    echo "throughput $arm run $i: $(grep -E 'req/s' $OUT/call4_tp_${arm}_$i.txt | tail -1)"
  done
done
