#!/bin/bash
# Session 22, call 1: FP8 KV attention with fp16 dots (a bf16 query's rows scaled by powers of two; Q_NORM in
# triton_kernels) against the session-21 code (ab_base/ = `git archive 5cd1d82 pagoda benchmarks`, carried):
# (1) fp8_attention_sweep.py, both trees; (2) the batch-256 decode step's kernels with FP8 weights + FP8 KV, both
# trees; (3) the attention/FP8 KV tests compiled for the GPU.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
ROOT=$PWD
M=/tmp/llama3-8b-shape
PYTHONPATH="$ROOT:/tmp/site" python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
BW=$(PYTHONPATH=$ROOT python -c "import sys; sys.path.insert(0, 'benchmarks/gpu'); from bandwidth import device_copy_bandwidth as f; \
print(round(f(1 << 28) / 1e9))")
echo "copy bandwidth $BW GB/s" | tee $OUT/call1_sweep.txt
for arm in new base; do
  dir=$ROOT; [ $arm = base ] && dir=$ROOT/ab_base
  extra=""; [ $arm = base ] && extra="--served-only"
  echo "== $arm" | tee -a $OUT/call1_sweep.txt
  (cd $dir && PYTHONPATH="$dir:/tmp/site" timeout 200 python benchmarks/gpu/fp8_attention_sweep.py --bandwidth-gbs $BW $extra) \
    2>&1 | grep -v Warning | tee -a $OUT/call1_sweep.txt
done
for arm in new base; do
  dir=$ROOT; [ $arm = base ] && dir=$ROOT/ab_base
  (cd $dir && PYTHONPATH="$dir:/tmp/site" timeout 150 python benchmarks/gpu/profile_steps.py $M --batch 256 --steps 10 \
    --engine-args '{"quantization": "fp8", "kv_cache_dtype": "fp8"}') > $OUT/call1_profile_$arm.txt 2>&1
  echo "profile $arm rc=$?"; grep -E "^== |^  +[0-9.]+ ms" $OUT/call1_profile_$arm.txt | head -12
done
PYTHONPATH="$ROOT:/tmp/site" timeout 240 python -m pytest -q -p no:cacheprovider tests/kernels/test_kv_fp8_kernels.py \
  tests/gpu/test_gpu_kv_fp8.py tests/kernels/test_triton_attention.py tests/kernels/test_pdl_protocol.py \
  tests/gpu/test_gpu_window_softcap.py > $OUT/call1_tests.txt 2>&1; echo "tests rc=$?"; tail -3 $OUT/call1_tests.txt
