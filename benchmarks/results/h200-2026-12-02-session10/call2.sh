#!/usr/bin/env bash
# Session-10 device call 2: call 1 found (a) the torch-free front end still loading torch (through what?), (b) the
# tokenizer-class helper process slowing the cold start (19.6 s against 14.2 s: it competed with the core's
# 16-thread Triton compiles; dropped), (c) the MoE GPU tests faulting the context in the dry pass (kernels an earlier
# LLM in the process compiled were cache hits and launched on garbage; now hidden during the pass). Here: who imports
# torch; start-up again (the tokenizer now loads while the config waits for the core's device count), this code
# against out/old (9507bd9), cold + 3 warm rounds; the GPU regression set.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
D=benchmarks/results/h200-2026-12-02-session10
echo "== who imports torch ($(date +%T))" >> $S
python $D/who_imports_torch.py pagoda.entrypoints.openai.api_server transformers.tokenization_utils_base >> $S 2>&1
python $D/who_imports_torch.py transformers.tokenization_utils_base >> $S 2>&1
echo "== start-up ($(date +%T))" >> $S
BASE_SRC=$PWD/out/old timeout 300 bash benchmarks/gpu/startup_frontend.sh 3 > /dev/null 2>&1; cat $OUT/startup_frontend.txt >> $S
tar czf $OUT/start_logs.tgz -C $OUT $(cd $OUT && ls start_*.log) && rm -f $OUT/start_*.log $OUT/startup_frontend.txt
echo "== GPU tests ($(date +%T))" >> $S
timeout 270 python -m pytest -q tests/gpu/test_gpu_moe.py tests/gpu/test_gpu_kv_fp8.py tests/gpu/test_gpu_w8a8.py \
  tests/gpu/test_gpu_spec_verify_graphs.py tests/gpu/test_gpu_gguf.py tests/gpu/test_gpu_transformers_fallback.py \
  tests/gpu/test_gpu_jit_precompile.py -p no:cacheprovider --timeout 200 > $OUT/tests.txt 2>&1
tail -15 $OUT/tests.txt >> $S
echo "== done ($(date +%T))" >> $S
