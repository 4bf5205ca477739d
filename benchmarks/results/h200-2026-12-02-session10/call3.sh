#!/usr/bin/env bash
# Session-10 device call 3: call 2 measured the torch-free front end no faster warm (5.8-6.5 s against 5.8-6.7 s)
# and slower cold (14.1 s against 12.1 s): transformers' tokenizer path still imports torch, and it ran late, beside
# the core's Triton compiles. Now the tokenizer starts loading on a thread at the early hand-over, before the front
# end's own imports. Start-up only: this code against out/old (9507bd9), 2 cold rounds, 3 warm rounds.
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
echo "== start-up ($(date +%T))" >> $S
COLD=2 BASE_SRC=$PWD/out/old timeout 300 bash benchmarks/gpu/startup_frontend.sh 3 > /dev/null 2>&1; cat $OUT/startup_frontend.txt >> $S
tar czf $OUT/start_logs.tgz -C $OUT $(cd $OUT && ls start_*.log) && rm -f $OUT/start_*.log $OUT/startup_frontend.txt
echo "== done ($(date +%T))" >> $S
