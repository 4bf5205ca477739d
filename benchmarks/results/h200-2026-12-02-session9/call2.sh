#!/usr/bin/env bash
# Session-9 device call 2 (issue 21 item 1): start-up after three mends of call 1's precompiler (stand-ins make a
# recorded variant's repeat dry launches no-ops; the dry pass's compiles start at once, into Triton's disk cache; the
# manifest key no longer includes PAGODA_CACHE) and two new savings (the activation peak kept in the manifest, so a
# known config skips the memory-profile run; device 0's CUDA context made on a thread while the core imports torch).
# Cold on/off/manifest, warm on/off and session 8's code (out/old), 2 rounds; AutoTokenizer's import profile; tests.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
echo "== start-up ($(date +%T))" >> $S
BASE_SRC=$PWD/out/old timeout 330 bash benchmarks/gpu/startup_jit.sh 2 > /dev/null 2>&1; cat $OUT/startup_jit.txt >> $S
tar czf $OUT/start_logs.tgz -C $OUT $(cd $OUT && ls start_*.log) && rm -f $OUT/start_*.log $OUT/startup_jit.txt
echo "== AutoTokenizer import ($(date +%T))" >> $S
python -X importtime -c "from transformers import AutoTokenizer" 2> $OUT/importtime_raw.txt
sort -t'|' -k2 -n -r $OUT/importtime_raw.txt | head -80 > $OUT/importtime_autotokenizer.txt; rm $OUT/importtime_raw.txt
python -c "
import time, sys; t = time.perf_counter(); from transformers import AutoTokenizer
print(f'from transformers import AutoTokenizer: {time.perf_counter() - t:.2f} s;', 'torch' in sys.modules, 'sklearn' in sys.modules, 'torch._dynamo' in sys.modules)" >> $S 2>&1
echo "== GPU tests ($(date +%T))" >> $S
timeout 200 python -m pytest -q -x tests/gpu/test_gpu_jit_precompile.py tests/gpu/test_gpu_memory_release.py \
  "tests/gpu/test_gpu_kv_features.py::test_mixed_step_graphs_match_eager" -p no:cacheprovider > $OUT/tests.txt 2>&1
tail -3 $OUT/tests.txt >> $S
echo "== done ($(date +%T))" >> $S
