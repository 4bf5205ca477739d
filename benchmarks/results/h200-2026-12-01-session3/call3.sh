#!/usr/bin/env bash
# Session-3 device call 3: the new small-M kernels (tests + sweeps) and structured outputs at batch 64 with grammar row threads.
set -uo pipefail
bash benchmarks/gpu/run_h100.sh env >/dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
mkdir -p /tmp/so_tok && gunzip -c out/so_tokz/tokenizer.json.gz > /tmp/so_tok/tokenizer.json && cp out/so_tokz/chat_template.jinja /tmp/so_tok/
echo "== structured b64 ($(date +%T))" | tee -a $S
timeout 200 python benchmarks/structured_outputs.py --shape benchmarks/gpu/llama3_8b_shape.json --tokenizer /tmp/so_tok --batch 64 --max-tokens 32 --repeats 5 > $OUT/structured.txt 2>&1; grep -v "rope_param" $OUT/structured.txt | tail -4 | tee -a $S
echo "== gpu tests ($(date +%T))" | tee -a $S
timeout 240 python -m pytest tests/gpu/test_gpu_fp8_gemv.py tests/gpu/test_gpu_w8a8.py tests/gpu/test_gpu_int4_kernels.py tests/gpu/test_gpu_structured.py tests/kernels/test_w4_gemv_triton.py -q 2>&1 | tail -8 | tee -a $S
echo "== int4 sweep ($(date +%T))" | tee -a $S
timeout 150 python benchmarks/gpu/int4_gemv_sweep.py > $OUT/int4_sweep.txt 2>&1; tail -30 $OUT/int4_sweep.txt
echo "== fp8 gemv sweep ($(date +%T))" | tee -a $S
timeout 150 python benchmarks/gpu/fp8_linear_bench.py --gemv-only > $OUT/fp8_gemv.txt 2>&1; tail -30 $OUT/fp8_gemv.txt
echo "== done ($(date +%T))" | tee -a $S
