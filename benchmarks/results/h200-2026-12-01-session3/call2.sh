#!/usr/bin/env bash
# Session-3 device call 2: structured outputs at batch 64 after the forward/sampling split; FP8 throughput warm; 8B embed.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env >/dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
mkdir -p /tmp/so_tok && gunzip -c out/so_tokz/tokenizer.json.gz > /tmp/so_tok/tokenizer.json && cp out/so_tokz/chat_template.jinja /tmp/so_tok/
echo "== gpu structured test ($(date +%T))" | tee -a $S
timeout 200 python -m pytest tests/gpu/test_gpu_structured.py -q -x 2>&1 | tail -3 | tee -a $S
echo "== structured b64 ($(date +%T))" | tee -a $S
timeout 300 python benchmarks/structured_outputs.py --shape benchmarks/gpu/llama3_8b_shape.json --tokenizer /tmp/so_tok --batch 64 --max-tokens 32 --repeats 5 > $OUT/structured.txt 2>&1; grep -v "rope_param" $OUT/structured.txt | tail -12 | tee -a $S
echo "== profile structured b64 ($(date +%T))" | tee -a $S
timeout 120 python benchmarks/gpu/profile_steps.py $M --batch 64 --structured --engine-args '{"tokenizer": "/tmp/so_tok"}' > $OUT/prof_structured.txt 2>&1; grep -A10 "^== batch" $OUT/prof_structured.txt | tee -a $S; tail -2 $OUT/prof_structured.txt
tp() { local name=$1; shift; echo "== throughput $name ($(date +%T))" | tee -a $S
  timeout 110 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy "$@" \
    --dataset sharegpt --num-prompts 300 --max-model-len 4096 --output-json "$OUT/tp_$name.json" > $OUT/tp_$name.log 2>&1
  grep -E "pagoda\]|rror" $OUT/tp_$name.log | tail -2 | tee -a $S; }
tp fp8_fp8kv_1 --quantization fp8 --kv-cache-dtype fp8
tp bf16_1
tp fp8_fp8kv_2 --quantization fp8 --kv-cache-dtype fp8
tp bf16_2
echo "== embed 8B ($(date +%T))" | tee -a $S
timeout 200 python benchmarks/embed_bench.py gpu --shape llama-8b --num 200 > $OUT/embed8b.txt 2>&1; tail -6 $OUT/embed8b.txt | tee -a $S
echo "== done ($(date +%T))" | tee -a $S
