python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
nvidia-smi --query-gpu=name,memory.used --format=csv
timeout 150 python -m pytest -q -x tests/kernels/test_fused_moe_quant.py tests/kernels/test_fused_moe.py -p no:cacheprovider 2>&1 | tail -4
timeout 330 python benchmarks/gpu/moe_bench.py --skip-hf --skip-mixtral --quantization none fp8 gptq --output-json $OUT/moe_quant.json 2>&1 | grep -v Warning | tail -20
timeout 100 python -m pytest -q -x tests/gpu/test_gpu_moe.py -k "quantized" -p no:cacheprovider 2>&1 | tail -6
