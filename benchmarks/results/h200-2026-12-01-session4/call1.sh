#!/usr/bin/env bash
# Session-4 device call 1: structured outputs b64 after the host-work cuts (issue 14), verify-4 after the pinned
# copies (issue 17), the 8B embedder (issue 15), bf16 vs FP8+FP8KV throughput warm (issue 12).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env 2>&1 | tail -4 > $OUT/env.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt; cat $OUT/env.txt >> $S
mkdir -p /tmp/so_tok && gunzip -c out/so_tokz/tokenizer.json.gz > /tmp/so_tok/tokenizer.json && cp out/so_tokz/chat_template.jinja /tmp/so_tok/
echo "== gpu structured test ($(date +%T))" | tee -a $S
timeout 150 python -m pytest tests/gpu/test_gpu_structured.py -q -x 2>&1 | tail -3 | tee -a $S
echo "== structured b64 ($(date +%T))" | tee -a $S
timeout 200 python benchmarks/structured_outputs.py --shape benchmarks/gpu/llama3_8b_shape.json --tokenizer /tmp/so_tok --batch 64 --max-tokens 32 --repeats 5 > $OUT/structured.txt 2>&1; grep -v "rope_param" $OUT/structured.txt | tail -6 | tee -a $S
echo "== spec verify ($(date +%T))" | tee -a $S
timeout 200 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec 2>&1 | tail -8 | tee -a $S
echo "== embed 8B ($(date +%T))" | tee -a $S
timeout 130 python benchmarks/embed_bench.py gpu --shape llama-8b > $OUT/embed8b.txt 2>&1; grep -v "torch_dtype" $OUT/embed8b.txt | tail -8 | tee -a $S
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
tp() { local name=$1; shift; echo "== throughput $name ($(date +%T))" | tee -a $S
  timeout 70 python -m pagoda.entrypoints.cli --log-level INFO bench throughput --model $M --load-format dummy "$@" \
    --dataset sharegpt --num-prompts 300 --max-model-len 4096 --output-json "$OUT/tp_$name.json" > $OUT/tp_$name.log 2>&1
  grep -E "pagoda\]|rror" $OUT/tp_$name.log | tail -2 | tee -a $S; }
tp bf16
tp fp8_fp8kv --quantization fp8 --kv-cache-dtype fp8
echo "== done ($(date +%T))" | tee -a $S
