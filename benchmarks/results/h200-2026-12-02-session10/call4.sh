#!/usr/bin/env bash
# Session-10 device call 4: the GPU tests main's code (after the dry-pass fix) had not run on a GPU since session 9's
# precompiler: the ones call 1 ran before its fault (on the shelved branch's code) and those no call ran.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
echo "== GPU tests ($(date +%T))" >> $S
timeout 420 python -m pytest -q tests/gpu/test_gpu_parity.py tests/gpu/test_gpu_deterministic.py \
  tests/gpu/test_gpu_kv_features.py tests/gpu/test_gpu_pooling.py tests/gpu/test_gpu_structured.py \
  tests/gpu/test_gpu_window_softcap.py tests/gpu/test_gpu_qk_norm_rope.py tests/gpu/test_gpu_int4_kernels.py \
  tests/gpu/test_gpu_fp8_gemv.py tests/gpu/test_gpu_memory_release.py tests/gpu/test_gpu_spec_no_sync.py \
  -p no:cacheprovider --timeout 300 > $OUT/tests.txt 2>&1
tail -25 $OUT/tests.txt >> $S
echo "== done ($(date +%T))" >> $S
