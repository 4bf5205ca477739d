import time, torch
from pagoda.quantization.kernels import cpu_int4_dot
torch.manual_seed(0)
res = {}
for n, k in ((960, 576), (576, 576), (3072, 576), (576, 1536)):
    q = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = (torch.randn(k // 32, n, 2) * 0.05).to(torch.bfloat16)
    for m in (48, 64, 96):
        x = torch.randn(m, k).to(torch.bfloat16)
        for _ in range(3): cpu_int4_dot.int4_dot_mm(x, packed, 32, sz)
        best = 1e9
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(20): cpu_int4_dot.int4_dot_mm(x, packed, 32, sz)
            best = min(best, (time.perf_counter() - t) / 20)
        res[m] = res.get(m, 0) + best * 30
print({m: f"{v*1e3:.2f} ms per 30 layers" for m, v in res.items()})
