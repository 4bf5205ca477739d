#!/usr/bin/env bash
# Session-9 device call 3: the GPU tests whose engines now run the start-up precompiler (dry pass, stand-ins, the
# manifest's activation peak on a second engine of the same config) on a fresh machine: MoE, parity, speculative
# decoding (verify graphs, EAGLE), the transformers fallback, pooling, FP8 KV, GGUF, deterministic mode, W8A8 (the
# precompiler's own tests ran in calls 1 and 2).
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
echo "== GPU tests ($(date +%T))" >> $S
timeout 450 python -m pytest -q tests/gpu/test_gpu_moe.py tests/gpu/test_gpu_parity.py \
  tests/gpu/test_gpu_spec_verify_graphs.py tests/gpu/test_gpu_transformers_fallback.py tests/gpu/test_gpu_pooling.py \
  tests/gpu/test_gpu_kv_fp8.py tests/gpu/test_gpu_gguf.py tests/gpu/test_gpu_deterministic.py tests/gpu/test_gpu_w8a8.py \
  -p no:cacheprovider --durations=15 > $OUT/tests.txt 2>&1; echo "pytest rc $?" >> $S
grep -E "passed|failed|error" $OUT/tests.txt | tail -5 >> $S
echo "== done ($(date +%T))" >> $S
