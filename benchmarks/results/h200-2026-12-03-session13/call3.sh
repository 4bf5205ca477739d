python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -1
export PYTHONPATH="$PWD:/tmp/site"
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json /tmp/llama3-8b-shape > /dev/null 2>&1
timeout 200 python benchmarks/gpu/profile_steps.py /tmp/llama3-8b-shape --batch 1 --steps 20 --timeline 2>&1 | grep -v Warn | grep -E "==|timeline|  [0-9]" | head -12
timeout 250 python benchmarks/gpu/profile_steps.py /tmp/llama3-8b-shape --batch 1 --steps 20 --timeline --engine-args '{"speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}}' 2>&1 | grep -v Warn | grep -E "==|timeline|  [0-9]" | head -22
