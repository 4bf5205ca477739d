python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
SPECJ='{"method":"synthetic","num_speculative_tokens":4}'
lat() { timeout 100 python -m pagoda.entrypoints.cli bench latency --model $M --load-format dummy --batch-size 1 --input-len 512 --output-len $3 --max-model-len $2 --max-num-seqs 32 $4 --output-json $OUT/$1_$2_$3.json 2>&1 | grep -E "^batch|rror" | sed "s/^/$1 len=$2: /" | tee -a $OUT/verify_len.txt; }
lat plain 2048 32 ""
lat verify 2048 32 "--speculative-config $SPECJ"
lat plain 4096 32 ""
lat verify 4096 32 "--speculative-config $SPECJ"
lat verify 2048 128 "--speculative-config $SPECJ"
python - $OUT <<'PY'
import json, sys, glob
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    d = json.load(open(f))
    d = d[0] if isinstance(d, list) else d
    print(f.split("/")[-1], {k: v for k, v in d.items() if "step" in k or "steps" in k})
PY
