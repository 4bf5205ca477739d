python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 200 python benchmarks/gpu/profile_steps.py $M --batch 1 32 --steps 40 --phases --timeline --engine-args '{"speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}}' > $OUT/phases_verify.txt 2>&1; grep -vE "^\s+[0-9.]+ ms\s+[0-9]+x" $OUT/phases_verify.txt | grep -v transformers
timeout 150 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 40 --phases --timeline > $OUT/phases_decode.txt 2>&1; grep -vE "^\s+[0-9.]+ ms\s+[0-9]+x" $OUT/phases_decode.txt | grep -v transformers
