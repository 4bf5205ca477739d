#!/usr/bin/env bash
# Session-10 device call 1 (issue 21 item 1): start-up with a front end that never imports torch (its config's one
# torch fact, the CUDA device count, comes from the early engine core) and, on a first start, a helper process that
# asks AutoTokenizer for the tokenizer's class beside the front end's imports. Cold and warm, this code against
# session 9's (out/old = 9507bd9) alternating, 3 warm rounds; the front end's import profile; the GPU regression set
# after EngineConfig's dtype/device became names.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
echo "== start-up ($(date +%T))" >> $S
BASE_SRC=$PWD/out/old timeout 300 bash benchmarks/gpu/startup_frontend.sh 3 > /dev/null 2>&1; cat $OUT/startup_frontend.txt >> $S
tar czf $OUT/start_logs.tgz -C $OUT $(cd $OUT && ls start_*.log) && rm -f $OUT/start_*.log $OUT/startup_frontend.txt
echo "== front-end imports ($(date +%T))" >> $S
python -X importtime -c "import pagoda.entrypoints.openai.api_server" 2> $OUT/it_raw.txt
sort -t'|' -k2 -n -r $OUT/it_raw.txt | head -40 > $OUT/importtime_frontend.txt; rm $OUT/it_raw.txt
python -c "
import time, sys; t = time.perf_counter(); import pagoda.entrypoints.openai.api_server
t1 = time.perf_counter(); import transformers.tokenization_utils_base
t2 = time.perf_counter(); from transformers import AutoTokenizer
t3 = time.perf_counter()
print(f'api_server {t1 - t:.2f} s (torch: {\"torch\" in sys.modules}); then transformers.tokenization_utils_base {t2 - t1:.2f} s (torch: {\"torch\" in sys.modules}); then AutoTokenizer {t3 - t2:.2f} s')" >> $S 2>&1
echo "== GPU tests ($(date +%T))" >> $S
timeout 330 python -m pytest -q tests/gpu/test_gpu_parity.py tests/gpu/test_gpu_jit_precompile.py \
  tests/gpu/test_gpu_kv_features.py tests/gpu/test_gpu_deterministic.py tests/gpu/test_gpu_pooling.py \
  tests/gpu/test_gpu_moe.py tests/gpu/test_gpu_kv_fp8.py tests/gpu/test_gpu_w8a8.py tests/gpu/test_gpu_spec_verify_graphs.py \
  -p no:cacheprovider --timeout 200 > $OUT/tests.txt 2>&1
tail -15 $OUT/tests.txt >> $S
echo "== done ($(date +%T))" >> $S
