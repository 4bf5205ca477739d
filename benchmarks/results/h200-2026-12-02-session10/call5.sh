#!/usr/bin/env bash
# Session-10 device call 5 (right after call 4, run inline; its output is quoted in RESULTS.md): the two structured-output GPU
# tests that call 4 could not import xgrammar for, with the xgrammar 0.2.9 and apache-tvm-ffi 0.1.15.post2 wheels
# carried in wheels/. Result: "2 passed, 1 warning in 15.89s".
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 wheels/xgrammar*.whl wheels/apache_tvm_ffi*.whl >/dev/null 2>&1
export PYTHONPATH="$PWD:/tmp/site:/tmp/site2"
python -c "import xgrammar; print('xgrammar ok')" 2>&1 | tail -1
timeout 200 python -m pytest -q tests/gpu/test_gpu_structured.py -p no:cacheprovider --timeout 150 2>&1 | tail -4
