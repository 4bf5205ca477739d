python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 150 python benchmarks/gpu/profile_steps.py $M --batch 1 --steps 40 --cprofile --engine-args '{"speculative_config": {"method": "synthetic", "num_speculative_tokens": 4}}' > $OUT/cprofile_verify.txt 2>&1; grep -A45 "tottime" $OUT/cprofile_verify.txt | head -50
for q in none gptq fp8; do
  QF=""; [ $q != none ] && QF="-q $q"
  timeout 140 python -m pagoda.entrypoints.cli bench latency --model $M --load-format dummy $QF --batch-size 1 --input-len 512 --output-len 64 --max-model-len 2048 --max-num-seqs 8 2>&1 | grep -E "^batch" | sed "s/^/$q: /" | tee -a $OUT/quant_b1.txt
done
timeout 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_parity.py tests/gpu/test_gpu_pdl.py tests/gpu/test_gpu_spec_verify_graphs.py tests/gpu/test_gpu_deterministic.py tests/kernels/test_dense_gemv.py 2>&1 | tail -4
