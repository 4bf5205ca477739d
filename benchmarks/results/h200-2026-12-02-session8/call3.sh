#!/usr/bin/env bash
# Session-8 device call 3 (issue 17): the default model (SmolLM2-135M-Instruct Q4_1 GGUF, joined here from the thirds
# carried by calls 1-3, md5 checked) on the GPU: default_model_check.py (bf16 chat answer; fp32 greedy vs HF), then the
# input-grounded workload with and without n-gram speculation (benchmarks/spec_decode_cpu_bench.py, same run).
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env 2>&1 | tail -4 > $OUT/env.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=$PWD/out/pc
S=$OUT/summary.txt; cat $OUT/env.txt >> $S; rm $OUT/env.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
mkdir -p /tmp/dm && cat out/g1/p out/g2/p out/g3/p > /tmp/dm/SmolLM2-135M-Instruct.Q4_1.gguf
G=/tmp/dm/SmolLM2-135M-Instruct.Q4_1.gguf
echo "md5 $(md5sum < $G | cut -c1-32) (want a1231443440b107ff29f02bdb38c9d0a)" | tee -a $S
log "default model check"
timeout 200 python benchmarks/gpu/default_model_check.py $G > $OUT/default_model.txt 2>&1; grep -E "PASS|FAIL|rror" $OUT/default_model.txt | tee -a $S
log "input-grounded workload, ngram k=4 vs none, default model (bf16), GPU"
timeout 300 python benchmarks/spec_decode_cpu_bench.py --model $G --reps 2 --gpu-memory-utilization 0.3 \
  --output-json $OUT/spec_default_gpu.json > $OUT/spec_default_gpu.txt 2>&1; tail -15 $OUT/spec_default_gpu.txt | tee -a $S
log done
