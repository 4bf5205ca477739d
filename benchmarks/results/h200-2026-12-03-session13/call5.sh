python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -1
export PYTHONPATH="$PWD:/tmp/site"
timeout 200 python benchmarks/gpu/moe_bench.py --skip-hf --skip-mixtral --quantization none fp8 gptq --output-json $OUT/moe_quant.json 2>&1 | grep -E "^\[|copy" | grep -v "in use before"
timeout 150 python -m pytest -q -x tests/gpu/test_gpu_moe.py tests/kernels/test_fused_moe_quant.py -k "quantized" -p no:cacheprovider 2>&1 | tail -2
