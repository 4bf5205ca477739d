#!/usr/bin/env bash
# Session-3 device call 1: baselines (FP8 throughput split, verify/decode step profiles, 8B embed, FP8 linears).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env >/dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
cat $OUT/summary.txt
tp() { local name=$1; shift; echo "== throughput $name ($(date +%T))" | tee -a $S
  timeout 120 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy "$@" \
    --dataset sharegpt --num-prompts 300 --max-model-len 4096 --output-json "$OUT/tp_$name.json" > $OUT/tp_$name.log 2>&1
  grep -E "pagoda\]|KV cache|Loaded|rror" $OUT/tp_$name.log | tail -4 | tee -a $S; }
tp bf16
tp fp8_fp8kv --quantization fp8 --kv-cache-dtype fp8
tp bf16_fp8kv --kv-cache-dtype fp8
pr() { local name=$1; shift; echo "== profile $name ($(date +%T))" | tee -a $S
  timeout 150 python benchmarks/gpu/profile_steps.py $M "$@" > $OUT/prof_$name.txt 2>&1; grep -A17 "^== batch" $OUT/prof_$name.txt | head -60 >> $S; tail -3 $OUT/prof_$name.txt; }
pr plain --batch 1 64
pr verify4 --batch 1 32 --engine-args '{"speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}, "max_num_seqs": 32}'
pr fp8kv --batch 64 256 --engine-args '{"quantization": "fp8", "kv_cache_dtype": "fp8"}'
echo "== embed 8B ($(date +%T))" | tee -a $S
timeout 170 python benchmarks/embed_bench.py gpu --shape llama-8b --num 200 > $OUT/embed8b.txt 2>&1; tail -5 $OUT/embed8b.txt | tee -a $S
echo "== fp8 linears ($(date +%T))" | tee -a $S
timeout 120 python benchmarks/gpu/fp8_linear_bench.py > $OUT/fp8_linear.txt 2>&1; tail -25 $OUT/fp8_linear.txt >> $S
echo "== done ($(date +%T))" | tee -a $S
