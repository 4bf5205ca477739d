#!/bin/bash
# Session 26, call 4 (on the GPU machine's 16-core Xeon, no GPU used): the CPU decoder stack's thread team at many
# threads. gguf's wheel carried in wheels/ (pip download gguf). The stress: tokens and logprobs of the tiny 4-bit GGUF
# model (tests/test_cpu_decoder_stack.py's), n-gram speculation, batches 1 and 3, at THREADS 0 (torch's 16), 2, 8, 16,
# 24 against THREADS = 1.
python -m pip install -q --no-index --no-deps --target /tmp/site2 wheels/gguf-*.whl >/dev/null 2>&1
export PYTHONPATH="$PWD:/tmp/site:/tmp/site2"
CUDA_VISIBLE_DEVICES= timeout 300 python -m pytest -q -x -p no:cacheprovider tests/test_cpu_decoder_stack.py
cat > /tmp/st.py <<'PY'
import sys, tempfile, pathlib, os
sys.path.insert(0, "tests")
os.environ["PAGODA_CACHE"] = tempfile.mkdtemp()
from test_cpu_decoder_stack import _tiny_quantized_gguf, ALL_4BIT, _llm, _outputs, NGRAM
from pagoda.models import cpu_decoder_stack as st
path = _tiny_quantized_gguf(pathlib.Path(tempfile.mkdtemp()) / "t.gguf", True, ALL_4BIT)
llm = _llm(path, speculative_config=NGRAM)
st.THREADS = 1
ref = {b: _outputs(llm, b) for b in (1, 3)}
for th in (0, 2, 8, 16, 24):
    st.THREADS = th
    for i in range(4):
        assert {b: _outputs(llm, b) for b in (1, 3)} == ref, (th, i)
print("stress ok")
PY
CUDA_VISIBLE_DEVICES= timeout 200 python /tmp/st.py
