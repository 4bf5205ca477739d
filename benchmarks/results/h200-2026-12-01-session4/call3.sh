#!/usr/bin/env bash
# Session-4 device call 3: the structured no-sync test after the masked_fill fix (issue 14); the MoE small-batch path
# (issue 13): GPU tests, per-layer sweep, whole-model decode with the small path on/off + HF peer; the memory-release
# test after its baseline fix; which Triton kernels compile inside the timed FP8 throughput run.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "gpu structured + memory-release tests"
timeout 120 python -m pytest tests/gpu/test_gpu_structured.py tests/gpu/test_gpu_memory_release.py -q -p no:cacheprovider > $OUT/tests_so_mem.txt 2>&1; tail -4 $OUT/tests_so_mem.txt | tee -a $S
log "moe tests"
timeout 150 python -m pytest tests/kernels/test_fused_moe.py tests/gpu/test_gpu_moe.py -q -p no:cacheprovider > $OUT/tests_moe.txt 2>&1; tail -4 $OUT/tests_moe.txt | tee -a $S
log "moe small sweep"
timeout 130 python benchmarks/gpu/moe_small_sweep.py > $OUT/moe_small_sweep.txt 2>&1; tail -40 $OUT/moe_small_sweep.txt | tee -a $S
log "moe bench (small path on/off, HF peer 12 layers scaled)"
timeout 240 python benchmarks/gpu/moe_bench.py --small-moe ab --skip-mixtral --hf-layers 12 --output-json $OUT/moe.json > $OUT/moe_bench.txt 2>&1; grep -E "^\[|copy bandwidth|total|rror|HF|hf" $OUT/moe_bench.txt | tee -a $S
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
log "throughput fp8_fp8kv with JIT log"
PAGODA_LOG_JIT_COMPILES=1 timeout 90 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy \
  --quantization fp8 --kv-cache-dtype fp8 --dataset sharegpt --num-prompts 300 --max-model-len 4096 --output-json $OUT/tp_fp8.json > $OUT/tp_fp8_jit.log 2>&1
grep -E "pagoda\]|rror" $OUT/tp_fp8_jit.log | tee -a $S
log done
