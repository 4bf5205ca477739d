python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 150 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 40 --cprofile --engine-args '{"speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}}' > $OUT/cprofile_verify.txt 2>&1
timeout 150 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 40 --cprofile > $OUT/cprofile_decode.txt 2>&1
grep -A45 "cumulative" $OUT/cprofile_verify.txt | head -50
