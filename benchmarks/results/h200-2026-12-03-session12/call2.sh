python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
R=benchmarks/results/h200-2026-12-03-session12
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 250 python benchmarks/gpu/decode_ab.py $M --switch gemv-table --gemv-table $R/table_before.json --batch 1 2 4 8 --rounds 2 2>&1 | grep -v Warn | tee $OUT/decode_ab.txt | tail -8
timeout 200 bash benchmarks/gpu/spec_verify_bench.sh $OUT/spec 2>&1 | tail -2
rm -rf $OUT/spec/llama3-8b-shape
timeout 100 python benchmarks/gpu/profile_steps.py $M --batch 1 --engine-args '{"speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}}' > $OUT/profile_verify.txt 2>&1; tail -30 $OUT/profile_verify.txt
