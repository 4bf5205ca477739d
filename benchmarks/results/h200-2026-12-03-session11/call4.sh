#!/usr/bin/env bash
# Session-11 device call 4: the final PDL code (one weight tile ahead of a GEMV's wait, the signal at a program's start;
# call 3's two variants dropped) on the other step-cost targets: the speculative verify-4 step against the decode step
# (issue 17: <= 1.15x at batch 1, <= 1.3x at 32), then Qwen3-30B-A3B batch 1 and 64 (issue 13: <= 2x / 1.3x floor),
# each with PAGODA_PDL=1 and 0 in the same call.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
for p in 1 0; do
  log "spec verify bench, PAGODA_PDL=$p"
  PAGODA_PDL=$p timeout 200 bash benchmarks/gpu/spec_verify_bench.sh /tmp/sv$p > $OUT/spec_pdl$p.txt 2>&1
  grep -E "^batch [0-9]+: decode step" $OUT/spec_pdl$p.txt | tee -a $S
done
for p in 1 0; do
  log "moe bench, PAGODA_PDL=$p"
  PAGODA_PDL=$p timeout 160 python benchmarks/gpu/moe_bench.py --skip-hf --skip-mixtral --output-json $OUT/moe_pdl$p.json \
    > $OUT/moe_pdl$p.txt 2>&1; grep -E "^\[|copy bandwidth|rror" $OUT/moe_pdl$p.txt | tee -a $S
done
log done
