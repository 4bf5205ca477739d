#!/usr/bin/env bash
# Session-9 device call 1 (issue 21 item 1): start-up with the Triton precompiler (cold on/off/manifest, warm on/off
# and session 8's code from out/old, 2 rounds); CUDA-context and import timings of the core's critical path; the
# GPU tests of the precompiler and of the captures it runs before (mixed-step graphs, verify graphs, memory release).
set -uo pipefail
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site" TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> $S
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" >> $S
echo "== start-up ($(date +%T))" >> $S
BASE_SRC=$PWD/out/old timeout 330 bash benchmarks/gpu/startup_jit.sh 2 > /dev/null 2>&1; cat $OUT/startup_jit.txt >> $S
tar czf $OUT/start_logs.tgz -C $OUT $(cd $OUT && ls start_*.log) && rm -f $OUT/start_*.log $OUT/startup_jit.txt
echo "== CUDA context and imports ($(date +%T))" >> $S
python - >> $S 2>&1 <<'PY'
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
torch.empty(1, device="cuda")
t2 = time.perf_counter()
print(f"plain: import torch {t1 - t0:.2f} s, then the first CUDA tensor {t2 - t1:.2f} s")
PY
python - >> $S 2>&1 <<'PY'
import ctypes, threading, time
t0 = time.perf_counter()
res = {}
def init():
    a = time.perf_counter()
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuInit(0)
    dev = ctypes.c_int()
    lib.cuDeviceGet(ctypes.byref(dev), 0)
    ctx = ctypes.c_void_p()
    lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)
    res["t"] = time.perf_counter() - a
th = threading.Thread(target=init)
th.start()
import torch
t1 = time.perf_counter()
th.join()
t2 = time.perf_counter()
torch.empty(1, device="cuda")
t3 = time.perf_counter()
print(f"ctypes context in a thread: import torch {t1 - t0:.2f} s, thread {res['t']:.2f} s, join {t2 - t1:.2f} s, "
      f"then the first CUDA tensor {t3 - t2:.2f} s")
PY
python -X importtime -c "from pagoda.config import EngineArgs; from pagoda.engine.core import EngineCore" 2> $OUT/importtime_raw.txt
sort -t'|' -k2 -n -r $OUT/importtime_raw.txt | head -60 > $OUT/importtime_top.txt; rm $OUT/importtime_raw.txt
echo "== GPU tests ($(date +%T))" >> $S
timeout 220 python -m pytest -q -x tests/gpu/test_gpu_jit_precompile.py tests/gpu/test_gpu_memory_release.py \
  tests/gpu/test_gpu_spec_verify_graphs.py "tests/gpu/test_gpu_kv_features.py::test_mixed_step_graphs_match_eager" \
  -p no:cacheprovider > $OUT/tests.txt 2>&1; tail -3 $OUT/tests.txt >> $S
echo "== done ($(date +%T))" >> $S
