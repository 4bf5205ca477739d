#!/usr/bin/env bash
# Session-14 device call 3: the fallback GPU tests after the partial-rotary fix.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl > /dev/null 2>&1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
echo "== fallback gpu tests ($(date +%T))" | tee -a $S
timeout 300 python -m pytest -q tests/gpu/test_gpu_transformers_fallback.py -p no:cacheprovider 2>&1 | tail -6 | tee -a $S
echo "== done ($(date +%T))" | tee -a $S
