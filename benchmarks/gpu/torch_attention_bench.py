"""Torch's own attention against our Triton kernel, where torch can do the job: prompts with
no cached context (K/V of the step itself, contiguous), causal, GQA, one layer of the
Llama-3-8B shape in bf16.

Candidates: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention, packed variable
lengths; K/V heads repeated for GQA when this torch has no ``enable_gqa``), and
``F.scaled_dot_product_attention`` (``is_causal``, ``enable_gqa``; equal lengths only, so a
padded batch in general). Ours reads K/V through the block table. Times are GPU medians
(``triton.testing.do_bench``); the floor is FLOPs at 700 TFLOP/s (half the square, causal).
Decode and chunks over a cached prefix are not here: torch 2.11 has no paged-KV attention.

Usage: python benchmarks/gpu/torch_attention_bench.py
"""

import inspect
from functools import partial

import torch
import torch.nn.functional as F
import triton.testing

from pagoda.attention import triton_kernels as tk

H, HKV, D, BS = 32, 8, 128, 16
dev = torch.device("cuda")
scale = D**-0.5

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # older torch
    varlen_attn = None
varlen_params = set(inspect.signature(varlen_attn).parameters) if varlen_attn else set()
print("torch", torch.__version__, "varlen_attn:", sorted(varlen_params) if varlen_attn else "absent")


def bench(fn) -> float:
    return triton.testing.do_bench(fn, return_mode="median") * 1000


def varlen_call(q, k, v, cu, max_len):
    kw = {}
    if "is_causal" in varlen_params:
        kw["is_causal"] = True
    else:
        kw["window_size"] = (-1, 0)
    if "scale" in varlen_params:
        kw["scale"] = scale
    if "enable_gqa" in varlen_params:
        kw["enable_gqa"] = True
    else:
        k = k.repeat_interleave(H // HKV, dim=1)
        v = v.repeat_interleave(H // HKV, dim=1)
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kw)


print(f"{'case':22s} {'triton us':>10s} {'varlen us':>10s} {'sdpa us':>9s} {'floor us':>9s} {'varlen err':>10s}")
for B, L in [(4, 1024), (16, 256), (1, 4096), (2, 8192)]:
    T = B * L
    q = torch.randn(T, H, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(T, HKV, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    cu = torch.arange(0, T + 1, L, device=dev, dtype=torch.int32)
    # Our kernel reads the same K/V from a paged cache (blocks in a random order).
    nb = L // BS
    perm = torch.randperm(B * nb, device=dev) + 1
    kc = torch.zeros(B * nb + 1, BS, HKV, D, device=dev, dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    kc[perm] = k.view(B * nb, BS, HKV, D)
    vc[perm] = v.view(B * nb, BS, HKV, D)
    bt = perm.view(B, nb).to(torch.int32)
    seq = torch.full((B,), L, device=dev, dtype=torch.int32)

    ours = partial(tk.unified_attention, q, kc, vc, cu, seq, bt, L, scale)
    ref = ours().float()
    t_tri = bench(ours)
    t_var = err = float("nan")
    if varlen_attn is not None:
        try:
            out = varlen_call(q, k, v, cu, L)
            out = out[0] if isinstance(out, tuple) else out
            err = ((out.float() - ref).norm() / ref.norm()).item()
            t_var = bench(partial(varlen_call, q, k, v, cu, L))
        except Exception as e:  # noqa: BLE001 - report and go on
            print("varlen_attn failed:", type(e).__name__, str(e)[:200])
    qb = q.view(B, L, H, D).transpose(1, 2)
    kb = k.view(B, L, HKV, D).transpose(1, 2)
    vb = v.view(B, L, HKV, D).transpose(1, 2)
    try:
        sdpa = partial(F.scaled_dot_product_attention, qb, kb, vb, is_causal=True, scale=scale, enable_gqa=True)
        t_sdpa = bench(sdpa)
    except Exception as e:  # noqa: BLE001
        print("sdpa failed:", type(e).__name__, str(e)[:200])
        t_sdpa = float("nan")
    floor = 4 * B * L * L * H * D / 2 / 700e12 * 1e6
    print(f"B={B:<3d} L={L:<6d}         {t_tri:10.1f} {t_var:10.1f} {t_sdpa:9.1f} {floor:9.1f} {err:10.1e}")

# One prompt at a time, as the backend calls it (SDPA + the copy back into the [T, H, D] output),
# at lengths that are not multiples of the tile sizes, against our kernel on the same prompt.
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402


def sdpa_copy(q, k, v, out):
    o = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                                       v.transpose(0, 1).unsqueeze(0), is_causal=True, scale=scale, enable_gqa=True)
    out.copy_(o[0].transpose(0, 1))


def flash_copy(q, k, v, out):
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        sdpa_copy(q, k, v, out)

print(f"{'one prompt':22s} {'triton us':>10s} {'sdpa+copy us':>12s} {'flash-only us':>13s}"
      "  (sdpa: torch's default choice)")
for L in (537, 1000, 1023, 1024, 3001, 4096):
    q = torch.randn(L, H, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(L, HKV, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    cu = torch.tensor([0, L], device=dev, dtype=torch.int32)
    nb = -(-L // BS)
    kc = torch.zeros(nb + 1, BS, HKV, D, device=dev, dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    kc.view(-1, HKV, D)[BS : BS + L] = k
    vc.view(-1, HKV, D)[BS : BS + L] = v
    bt = torch.arange(1, nb + 1, device=dev, dtype=torch.int32).view(1, nb)
    seq = torch.tensor([L], device=dev, dtype=torch.int32)
    out = torch.empty_like(q)

    t_tri = bench(partial(tk.unified_attention, q, kc, vc, cu, seq, bt, L, scale))
    t_sd = bench(partial(sdpa_copy, q, k, v, out))
    t_fl = bench(partial(flash_copy, q, k, v, out))
    print(f"L={L:<6d}                {t_tri:10.1f} {t_sd:12.1f} {t_fl:13.1f}")
# A first call at a new length (what a stream of prompts of every length meets): default vs flash.
for name, ctx in (("default", None), ("flash-only", [SDPBackend.FLASH_ATTENTION])):
    times = []
    for L in (611, 733, 877):
        q = torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, HKV, L, D, device=dev, dtype=torch.bfloat16)
        torch.cuda.synchronize()
        t0 = torch.cuda.Event(enable_timing=True)
        t1 = torch.cuda.Event(enable_timing=True)
        import time as _t

        w0 = _t.perf_counter()
        if ctx:
            with sdpa_kernel(ctx):
                F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
        else:
            F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
        torch.cuda.synchronize()
        times.append((_t.perf_counter() - w0) * 1e3)
    print(f"first call at a new length, {name}: " + ", ".join(f"{t:.2f} ms" for t in times))
