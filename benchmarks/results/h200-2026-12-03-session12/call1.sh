set -x
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv
timeout 90 python -m pytest -q -p no:cacheprovider tests/kernels/test_dense_gemv.py 2>&1 | tail -3
timeout 330 python benchmarks/gpu/dense_gemv_sweep.py --json $OUT/sweep.json 2>&1 | tee $OUT/sweep.txt | tail -60
PAGODA_CLI="python benchmarks/gpu/with_gemv_table.py --table $OUT/sweep.json --" timeout 200 bash benchmarks/gpu/spec_verify_bench.sh $OUT/new 2>&1 | tail -4
rm -rf $OUT/old/llama3-8b-shape $OUT/new/llama3-8b-shape
