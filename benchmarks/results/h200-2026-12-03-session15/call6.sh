python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
timeout 120 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_spec_verify_graphs.py 2>&1 | tail -2
timeout 200 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec 2>&1 | tail -12 | grep -v Captured | tee $OUT/spec_verify.txt
rm -rf $OUT/spec/llama3-8b-shape
