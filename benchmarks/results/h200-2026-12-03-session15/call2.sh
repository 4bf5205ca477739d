python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
timeout 120 python benchmarks/gpu/graph_launch_cost.py --nodes 1 50 100 200 400 800 2>&1 | tee $OUT/graph_launch.txt
timeout 300 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec 2>&1 | tail -12 | tee $OUT/spec_verify.txt
