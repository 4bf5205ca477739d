#!/usr/bin/env bash
# Session-3 device call 5: speculative verify after the host-sync removal; host profile of constrained batch-64 steps.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env >/dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
echo "== spec gpu tests ($(date +%T))" | tee -a $S
timeout 80 python -m pytest -q -x tests/gpu/test_gpu_spec_no_sync.py tests/gpu/test_gpu_spec_verify_graphs.py 2>&1 | tail -3 | tee -a $S
echo "== spec verify bench ($(date +%T))" | tee -a $S
timeout 150 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec 2>&1 | grep -E "^batch|rror" | tee -a $S
gunzip -c out/so_tokz/tokenizer.json.gz > $M/tokenizer.json && cp out/so_tokz/chat_template.jinja $M/
echo "== host profile structured b64 ($(date +%T))" | tee -a $S
timeout 70 python benchmarks/gpu/profile_steps.py $M --batch 64 --structured --cprofile --steps 15 2>&1 | grep -v "rope_param\|Warn\|warn" | head -60
echo "== done ($(date +%T))" | tee -a $S
