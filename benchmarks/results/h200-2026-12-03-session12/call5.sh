python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
R=benchmarks/results/h200-2026-12-03-session12
timeout 170 bash benchmarks/gpu/spec_verify_bench.sh $OUT/cublas 2>&1 | tail -2
PAGODA_CLI="python benchmarks/gpu/with_gemv_table.py --table $R/verify_rows_forced.json --" timeout 170 bash benchmarks/gpu/spec_verify_bench.sh $OUT/gemv 2>&1 | tail -2
rm -rf $OUT/*/llama3-8b-shape
