#!/usr/bin/env bash
# Session-11 device call 7: call 6 found a second start of a GPTQ config (its Triton manifest reused, the memory-profile
# forward skipped) failing in the decode-graph capture, with or without PDL. The warm-ups before each capture now run
# the whole captured body (logits and argmax too), not the forward alone, so nothing runs for the first time inside a
# capture. GPTQ three starts (fresh, manifest, manifest), then batch-1 steps for the ratios: bf16, FP8, GPTQ (PDL off
# for the W4 kernel since call 6 measured it slower with it).
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false PAGODA_CACHE=/tmp/pc7
M=/tmp/llama3-8b-shape; S=$OUT/summary.txt
log() { echo "== $* ($(date +%T))" | tee -a $S; }
[ -f "$M/config.json" ] || python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json "$M" >/dev/null
i=0
for q in gptq gptq gptq none fp8 none; do
  i=$((i+1))
  log "run $i: latency quantization $q"
  qflag=(); [ "$q" != none ] && qflag=(--quantization "$q")
  timeout 80 python -m pagoda.entrypoints.cli --log-level INFO bench latency --model $M --load-format dummy \
    "${qflag[@]}" --batch-size 1 --input-len 512 --output-len 32 --num-iters 1 --max-model-len 4096 \
    > $OUT/run$i.log 2>&1; grep -E "^batch|rror|manifest|Engine built" $OUT/run$i.log | cut -c1-220 | tee -a $S
done
log done
