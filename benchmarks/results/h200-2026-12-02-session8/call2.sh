#!/usr/bin/env bash
# Session-8 device call 2 (issue 13): the small MoE path routing inside its gate/up kernel (FUSED_ROUTING, one launch
# fewer per MoE layer): its kernel tests and the MoE GPU tests on the card, then the Qwen3-30B-A3B shape's decode
# step with it on and off (new engines, same call). Carries the second third of the default model's GGUF (call 3).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env 2>&1 | tail -4 > $OUT/env.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
S=$OUT/summary.txt; cat $OUT/env.txt >> $S; rm $OUT/env.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
log "moe tests"
timeout 200 python -m pytest tests/kernels/test_fused_moe.py tests/gpu/test_gpu_moe.py -q -rf -p no:cacheprovider \
  > $OUT/tests.txt 2>&1; tail -4 $OUT/tests.txt | tee -a $S
log "moe bench, fused routing a/b"
timeout 300 python benchmarks/gpu/moe_bench.py --fused-routing ab --skip-hf --skip-mixtral --output-json $OUT/moe.json \
  > $OUT/moe_bench.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/moe_bench.txt | tee -a $S
ls -la out/g1 out/g2 >> $S 2>&1
log done
