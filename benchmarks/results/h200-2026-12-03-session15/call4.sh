python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
timeout 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_spec_verify_graphs.py tests/gpu/test_gpu_spec_no_sync.py 2>&1 | tail -3
SPECJ='{"method":"synthetic","num_speculative_tokens":4}'
lat() { timeout 100 python benchmarks/gpu/with_module_values.py pagoda.worker.graph_capture.SPLIT_FRACTION=$2 -- bench latency --model $M --load-format dummy --batch-size 1 32 --input-len 512 --output-len 32 --max-model-len 2048 --max-num-seqs 32 $3 2>&1 | grep -E "^batch|rror" | sed "s/^/$1: /" | tee -a $OUT/verify_ab.txt; }
lat plain 10 ""
lat verify-split 10 "--speculative-config $SPECJ"
lat verify-one-graph 0 "--speculative-config $SPECJ"
lat verify-split 10 "--speculative-config $SPECJ"
for f in 10 0; do
timeout 120 python benchmarks/gpu/with_module_values.py pagoda.worker.graph_capture.SPLIT_FRACTION=$f -- --script benchmarks/gpu/profile_steps.py $M --batch 1 32 --steps 40 --phases --engine-args "{\"speculative_config\": $SPECJ}" > $OUT/phases_split$f.txt 2>&1; grep -E "host phases|launch: forward|wait returned|== batch|rror" $OUT/phases_split$f.txt | sed "s/^/split=$f: /"
done
