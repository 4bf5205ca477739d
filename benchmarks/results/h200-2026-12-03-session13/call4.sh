python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -1
export PYTHONPATH="$PWD:/tmp/site"
for q in fp8 int4; do timeout 200 python benchmarks/gpu/moe_small_sweep.py --quant $q 2>&1 | grep -v Warn | tee $OUT/sweep_$q.txt | grep -E "T=|CHOOSE|MoeGemvRule\(|copy" ; done
