#!/bin/bash
# Session 21, call 2: (1) the host time of eager mixed steps at 256 decodes (profile_mixed_eager.py: what in them
# synchronizes, where their host time goes); (2) issue 12's FP8 + FP8 KV throughput and the attention kernel's time
# over a bf16 vs an FP8 cache at 256 rows.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
P=benchmarks/gpu/profile_mixed_eager.py
timeout 150 python $P $M --batch 256 --prompt 200 600 1200 --budget 2048 --steps 20 --sync-debug \
  > $OUT/call2_sync.txt 2>&1; echo "sync rc=$?"
grep -E "^== |^ +[0-9]+x " $OUT/call2_sync.txt
timeout 150 python $P $M --batch 256 --prompt 200 600 --budget 2048 --steps 20 --cprofile \
  > $OUT/call2_cprofile.txt 2>&1; echo "cprofile rc=$?"
grep -E "^== " $OUT/call2_cprofile.txt
for kv in auto fp8; do
  timeout 120 python benchmarks/gpu/profile_steps.py $M --batch 256 --steps 10 --engine-args "{\"kv_cache_dtype\": \"$kv\"}" \
    > $OUT/call2_attn_$kv.txt 2>&1; echo "profile kv=$kv rc=$?"; grep -E "^== |^  +[0-9.]+ ms" $OUT/call2_attn_$kv.txt | head -10
done
for i in 1 2; do
  for q in bf16 fp8; do
    extra=""; [ $q = fp8 ] && extra="--quantization fp8 --kv-cache-dtype fp8"
    timeout 150 python -m pagoda.entrypoints.cli --log-level WARNING bench throughput --model $M --load-format dummy \
      --dataset sharegpt --num-prompts 300 $extra > $OUT/call2_tp_${q}_$i.txt 2>&1
    echo "throughput $q run $i: $(grep -E 'req/s' $OUT/call2_tp_${q}_$i.txt | tail -2 | tr '\n' ' ')"
  done
done
