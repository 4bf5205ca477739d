#!/usr/bin/env bash
# Session-3 device call 4: quantized decode steps with the measured kernel tables; the fallback with CUDA graphs; a host profile of constrained steps.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env >/dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
for q in none gptq fp8; do
  echo "== latency quantization $q ($(date +%T))" | tee -a $S
  qflag=(); [ "$q" != none ] && qflag=(--quantization "$q")
  timeout 110 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy "${qflag[@]}" \
    --batch-size 1 64 --input-len 512 --output-len 32 --num-iters 1 --max-model-len 4096 \
    --output-json "$OUT/lat_q_$q.json" > $OUT/lat_q_$q.log 2>&1; grep -E "^batch|Loaded|rror" $OUT/lat_q_$q.log | tee -a $S
done
echo "== fallback gpu test ($(date +%T))" | tee -a $S
timeout 150 python -m pytest -q tests/gpu/test_gpu_transformers_fallback.py 2>&1 | tail -3 | tee -a $S
echo "== fallback latency ($(date +%T))" | tee -a $S
timeout 120 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy --model-impl transformers \
  --batch-size 1 64 --input-len 512 --output-len 32 --num-iters 1 --max-model-len 4096 --output-json $OUT/fb.json > $OUT/fb.log 2>&1
grep -E "^batch|Captured|without CUDA|rror" $OUT/fb.log | tee -a $S
mkdir -p /tmp/so_tok && gunzip -c out/so_tokz/tokenizer.json.gz > $M/tokenizer.json && cp out/so_tokz/chat_template.jinja $M/
echo "== host profile structured b64 ($(date +%T))" | tee -a $S
timeout 120 python benchmarks/gpu/profile_steps.py $M --batch 64 --structured --cprofile > $OUT/prof_structured.txt 2>&1
grep -A8 "^== batch" $OUT/prof_structured.txt | tee -a $S; grep -A30 "Ordered by" $OUT/prof_structured.txt | head -34
echo "== done ($(date +%T))" | tee -a $S
