#!/usr/bin/env bash
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
M=/tmp/llama3-8b-shape
python benchmarks/gpu/make_shape_model.py benchmarks/gpu/llama3_8b_shape.json $M >/dev/null
gunzip -c out/so_tokz/tokenizer.json.gz > $M/tokenizer.json && cp out/so_tokz/chat_template.jinja $M/
timeout 110 python benchmarks/gpu/profile_steps.py $M --batch 64 --structured --cprofile --steps 15 2>&1 | grep -v "rope_param\|Warn\|warn" | head -70
