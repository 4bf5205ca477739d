#!/usr/bin/env bash
# Session-11 device call 6: call 5's GPTQ run with PAGODA_PDL=0 failed in graph capture right after it preloaded the
# manifest written by the PAGODA_PDL=1 run (the manifest key did not cover PDL; now it does). Is a second start of the
# same GPTQ config (manifest reused, no dry pass) sound on its own? GPTQ with PDL on twice (fresh cache, then the
# manifest), then PDL off (its own key now); then the same for the unquantized shape once more.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=/tmp/pc6
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
i=0
for q in gptq none; do
  for p in 1 1 0; do
    i=$((i+1))
    log "run $i: latency quantization $q, PAGODA_PDL=$p"
    qflag=(); [ "$q" != none ] && qflag=(--quantization "$q")
    PAGODA_PDL=$p timeout 90 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy \
      "${qflag[@]}" --batch-size 1 --input-len 512 --output-len 32 --num-iters 1 --max-model-len 4096 \
      > $OUT/run$i.log 2>&1; grep -E "^batch|rror|manifest|Activation peak" $OUT/run$i.log | cut -c1-200 | tee -a $S
  done
done
log done
