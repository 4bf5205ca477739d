#!/bin/bash
# Session 28's plan for the next device call (not run: loans were paused): the GPU machine's 16-core Xeon host
# (AVX512-BF16, VNNI, AMX) checks and times what session 28 wrote on the 2-vCPU AMD VM, without the default model
# (its GGUF is over one call's 64 MiB): (1) the CPU tests of the Q8_0 head, the decode attention's position chunks and
# the decoder stack (an Intel CPU rounds vdpbf16ps's pair sums its own way: the kernels' self-checks and these tests
# say whether the properties hold there); (2) the head bench at 16 threads; (3) the decode attention kernel with and
# without position chunks at 16 threads (the many-core case they were written for: a batch-1 decode has 3 items
# without them). Run from the repository root on that machine (device tool): bash <this file>; results under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
python -m pip install -q --no-index --find-links wheels --target /tmp/site fastapi uvicorn uvloop httptools msgspec \
  pyzmq prometheus_client openai psutil httpx aiohttp pytest-timeout 2>&1 | tail -2
python -m pip install -q --no-index --no-deps --find-links wheels --target /tmp/site gguf 2>&1 | tail -2
export PYTHONPATH="$PWD:/tmp/site"
lscpu | grep -E "Model name|^CPU\(s\)|Thread" | tee $OUT/xeon_summary.txt
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_cpu_head_q8.py tests/test_cpu_decode_native.py \
  tests/test_cpu_decoder_stack.py tests/test_cpu_head_dot.py tests/test_logits_refine.py > $OUT/xeon_tests.txt 2>&1
echo "tests rc=$?" | tee -a $OUT/xeon_summary.txt; tail -2 $OUT/xeon_tests.txt | tee -a $OUT/xeon_summary.txt
timeout 200 python benchmarks/cpu_head_bench.py --rows 1 2 4 5 8 16 --reps 15 2>&1 | tee $OUT/xeon_head_bench.txt \
  | tee -a $OUT/xeon_summary.txt
# attn_chunks_bench.py.txt compiles cpu_decode_attention.c with -DPOS_CHUNK, which the file no longer reads: the
# same comparison through the library's own setter, 1, 4 and 16 threads.
timeout 200 python - <<'PY' 2>&1 | tee $OUT/xeon_attn_chunks.txt | tee -a $OUT/xeon_summary.txt
import statistics, time, torch
from pagoda.attention import cpu_decode_native as c
lib = c._lib()
g = torch.Generator().manual_seed(0)
H, HKV, D, BS = 9, 3, 64, 16
flush = torch.ones(64 << 20)
for L in (1000, 3000):
    nb = L // BS + 1
    k = torch.randn(nb + 8, HKV, BS, D, generator=g).bfloat16(); v = torch.randn_like(k)
    bt = torch.randperm(nb + 8, generator=g)[:nb].to(torch.int32)[None]
    q = torch.randn(1, H, D, generator=g).bfloat16()
    req, pos = torch.zeros(1, dtype=torch.int32), torch.tensor([L - 1], dtype=torch.int32)
    for threads in (1, 4, 16):
        ts = {0: [], 256: []}
        for _ in range(30):
            for chunk in ts:
                c.set_pos_chunk(chunk); flush.sum()
                out = torch.empty(1, H, D, dtype=torch.bfloat16)
                t = time.perf_counter()
                lib.pagoda_decode_attention(q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(), HKV, BS,
                                            bt.data_ptr(), bt.stride(0), req.data_ptr(), pos.data_ptr(), 1, H, D, L - 1,
                                            0.125, 0, 1, threads, out.data_ptr())
                ts[chunk].append(time.perf_counter() - t)
        c.set_pos_chunk(0)
        print(f"L={L} threads={threads}: " + "  ".join(f"chunk {k}: min {min(v)*1e6:.0f} med {statistics.median(v)*1e6:.0f} us"
                                                  for k, v in ts.items()), flush=True)
PY
