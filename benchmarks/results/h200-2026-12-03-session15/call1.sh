python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 100 python -m pytest -q -p no:cacheprovider tests/kernels/test_fp8_gemv_kernel.py tests/gpu/test_gpu_w8a8.py tests/gpu/test_gpu_fp8_gemv.py 2>&1 | tail -3
timeout 200 python benchmarks/gpu/fp8_linear_bench.py --gemv-only --ms 1 --json $OUT/fp8_table.json > $OUT/fp8_sweep.txt 2>&1; grep -E "^M=1|copy" $OUT/fp8_sweep.txt | cut -c1-200
lat() { timeout 100 python benchmarks/gpu/with_gemv_table.py $2 -- bench latency --model $M --load-format dummy $3 --batch-size 1 --input-len 512 --output-len 64 --max-model-len 2048 --max-num-seqs 8 2>&1 | grep -E "^batch|Error|error" | sed "s/^/$1: /" | tee -a $OUT/quant_b1.txt; }
lat bf16 "" ""
lat fp8-old "" "-q fp8"
lat fp8-new "--fp8-table $OUT/fp8_table.json" "-q fp8"
lat bf16 "" ""
lat fp8-new "--fp8-table $OUT/fp8_table.json" "-q fp8"
