#!/usr/bin/env bash
# Session-6 device call 1: session 4's unmeasured GPU work. The GPU tests it touched; Qwen3-30B-A3B batch-1 decode
# with the q/k norm fused into the rotary kernel on/off (issue 13); the per-kernel profile of that step; which Triton
# kernels the FP8+FP8KV throughput run compiles now that the split count is a runtime argument (issue 21 item 1).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env 2>&1 | tail -4 > $OUT/env.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt; cat $OUT/env.txt >> $S
log() { echo "== $* ($(date +%T))" | tee -a $S; }
mkdir -p /tmp/so_tok && gunzip -c out/so_tokz/tokenizer.json.gz > /tmp/so_tok/tokenizer.json && cp out/so_tokz/chat_template.jinja /tmp/so_tok/
log "gpu tests"
timeout 220 python -m pytest tests/gpu/test_gpu_qk_norm_rope.py tests/gpu/test_gpu_moe.py tests/gpu/test_gpu_structured.py \
  tests/gpu/test_gpu_memory_release.py tests/kernels/test_triton_attention.py tests/kernels/test_fused_qk_norm_rope.py \
  -q -rf -p no:cacheprovider > $OUT/tests.txt 2>&1; tail -8 $OUT/tests.txt | tee -a $S
log "moe bench, fused q/k norm on then off (batch 1)"
timeout 150 python benchmarks/gpu/moe_bench.py --small-moe on --fused-qk-norm ab --skip-hf --skip-mixtral --output-json $OUT/moe.json \
  > $OUT/moe_bench.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/moe_bench.txt | tee -a $S
log "profile Qwen3-30B-A3B decode replay, batch 1 and 64"
python -c "import json, runpy; d = runpy.run_path('benchmarks/gpu/moe_bench.py'); json.dump(d['QWEN3_30B_A3B'], open('/tmp/q3moe.json', 'w'))"
python benchmarks/gpu/make_shape_model.py /tmp/q3moe.json /tmp/q3moe > /dev/null
timeout 90 python benchmarks/gpu/profile_decode.py /tmp/q3moe 1 64 > $OUT/moe_profile.txt 2>&1; grep -vE "rope_param|torch_dtype" $OUT/moe_profile.txt | tail -32 | tee -a $S
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
log "throughput fp8_fp8kv with JIT log (cold Triton cache)"
TRITON_CACHE_DIR=/tmp/triton_cold PAGODA_LOG_JIT_COMPILES=1 timeout 100 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy \
  --quantization fp8 --kv-cache-dtype fp8 --dataset sharegpt --num-prompts 300 --max-model-len 4096 --output-json $OUT/tp_fp8.json > $OUT/tp_fp8_jit.log 2>&1
grep -E "pagoda\]|rror|start-up|graph" $OUT/tp_fp8_jit.log | tail -12 | tee -a $S
echo "JIT compiles: $(grep -c 'JIT compile' $OUT/tp_fp8_jit.log)" | tee -a $S
log done
