#!/usr/bin/env bash
# Session-14 device call 2: GPU tests (quantized + GGUF MoE, the fallback with the GEMV, the GEMV kernels).
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.used --format=csv | tee -a $S
python -c "import transformers, torch, triton; print(transformers.__version__, torch.__version__, triton.__version__)" | tee -a $S
echo "== gpu moe + gguf tests ($(date +%T))" | tee -a $S
timeout 520 python -m pytest -q tests/gpu/test_gpu_moe.py tests/kernels/test_fused_moe_quant.py tests/gpu/test_gpu_gguf.py tests/gpu/test_gpu_transformers_fallback.py tests/kernels/test_dense_gemv.py -p no:cacheprovider 2>&1 | tail -8 | tee -a $S
echo "== done ($(date +%T))" | tee -a $S
