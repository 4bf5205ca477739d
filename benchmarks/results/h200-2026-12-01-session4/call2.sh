#!/usr/bin/env bash
# Session-4 device call 2: the failing structured GPU test in full; which Triton kernels compile inside the timed
# FP8+FP8KV throughput run (PAGODA_LOG_JIT_COMPILES); the rest of tests/gpu (never run whole after session 3's merges).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
echo "== gpu structured test ($(date +%T))" | tee -a $S
timeout 150 python -m pytest tests/gpu/test_gpu_structured.py -q -x -p no:cacheprovider > $OUT/structured_test.txt 2>&1; tail -3 $OUT/structured_test.txt | tee -a $S
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
echo "== throughput fp8_fp8kv with JIT log ($(date +%T))" | tee -a $S
PAGODA_LOG_JIT_COMPILES=1 timeout 90 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy \
  --quantization fp8 --kv-cache-dtype fp8 --dataset sharegpt --num-prompts 300 --max-model-len 4096 --output-json $OUT/tp_fp8.json > $OUT/tp_fp8_jit.log 2>&1
grep -E "pagoda\]|rror|prefix cache reset" $OUT/tp_fp8_jit.log | tee -a $S
awk '/prefix cache reset/{f=1} f && /JIT compile/' $OUT/tp_fp8_jit.log | tee -a $S | tail -3
echo "== tests/gpu rest ($(date +%T))" | tee -a $S
timeout -s INT 300 python -m pytest tests/gpu -q -rf -p no:cacheprovider --ignore tests/gpu/test_gpu_structured.py \
  --ignore tests/gpu/test_gpu_moe.py --ignore tests/gpu/test_gpu_tensor_parallel.py --ignore tests/gpu/test_gpu_tensor_parallel_graphs.py \
  --ignore tests/gpu/test_gpu_pipeline_parallel.py --ignore tests/gpu/test_gpu_data_parallel.py > $OUT/gpu_tests.txt 2>&1
tail -25 $OUT/gpu_tests.txt | tee -a $S
echo "== done ($(date +%T))" | tee -a $S
