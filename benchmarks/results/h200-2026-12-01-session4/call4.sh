#!/usr/bin/env bash
# Session-4 device call 4 (the last ~5 min of budget): MoE batch-1/64 decode with the swept SMALL_MOE_TABLE; the FP8
# throughput run's Triton compiles described (JIT log with constexprs); the memory test cut off in call 3.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "moe bench, swept table"
timeout 70 python benchmarks/gpu/moe_bench.py --small-moe on --skip-hf --skip-mixtral --output-json $OUT/moe.json > $OUT/moe_bench.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/moe_bench.txt | tee -a $S
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
log "throughput fp8_fp8kv with JIT log"
PAGODA_LOG_JIT_COMPILES=1 timeout 75 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy \
  --quantization fp8 --kv-cache-dtype fp8 --dataset sharegpt --num-prompts 300 --max-model-len 4096 > $OUT/tp_fp8_jit.log 2>&1
grep -E "pagoda\]|rror" $OUT/tp_fp8_jit.log | tee -a $S
log "memory test 3"
timeout 45 python -m pytest "tests/gpu/test_gpu_memory_release.py::test_a_live_engine_is_not_counted_as_the_new_ones_use" -q -p no:cacheprovider 2>&1 | tail -2 | tee -a $S
log done
