"""Time the Triton paged-attention kernels on one layer of the Llama-3-8B shape.

Decode (one query per request, ~1k context) and prefill (1k-token prompts); each
against the bytes floor (K/V read once at the measured copy bandwidth, passed as
argv[1] GB/s, default 3000) and checked against the PyTorch reference. argv[2] = fp8 times an
FP8 (e4m3) KV cache instead of bf16 (the floor counts its 1-byte elements).
"""

import sys
from functools import partial

import torch
import triton.testing

from pagoda.attention.backend import get_backend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.reference import ref_paged_attention

BW = float(sys.argv[1]) if len(sys.argv) > 1 else 3000.0
KV_DTYPE = torch.float8_e4m3fn if len(sys.argv) > 2 and sys.argv[2] == "fp8" else torch.bfloat16
H, HKV, D, BS = 32, 8, 128, 16
dev = torch.device("cuda")
tri = get_backend("triton")
torch_be = get_backend("torch")  # peer: our PyTorch backend on the GPU


def make(B, q_len, ctx):
    nb = -(-ctx // BS)
    num_blocks = B * nb + 1
    k = torch.randn(num_blocks, BS, HKV, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    k, v = k.to(KV_DTYPE), v.to(KV_DTYPE)
    perm = torch.randperm(num_blocks - 1, device=dev)[: B * nb] + 1
    bt = perm.view(B, nb).to(torch.int32)
    q = torch.randn(B * q_len, H, D, device=dev, dtype=torch.bfloat16)
    meta = AttentionMetadata(
        query_start_loc=torch.arange(0, B * q_len + 1, q_len, device=dev, dtype=torch.int32),
        seq_lens=torch.full((B,), ctx, device=dev, dtype=torch.int32),
        block_tables=bt,
        slot_mapping=torch.full((B * q_len,), -1, device=dev, dtype=torch.int64),
        max_query_len=q_len, max_seq_len=ctx, query_lens_cpu=[q_len] * B, seq_lens_cpu=[ctx] * B,
        is_decode_only=q_len == 1,
    )
    return q, k, v, meta


print(f"{'case':28s} {'triton us':>10s} {'torch us':>10s} {'floor us':>9s} {'x floor':>8s} {'rel err':>8s}")
for B, q_len, ctx in [(1, 1, 1024), (64, 1, 1024), (256, 1, 1024), (1, 1, 8192), (4, 1024, 1024), (1, 512, 4096),
                     (1, 100, 2100), (1, 100, 16384)]:
    q, k, v, meta = make(B, q_len, ctx)
    scale = D ** -0.5
    out = tri.forward(q, k, v, meta, scale)
    ref = ref_paged_attention(q.float(), k.float(), v.float(), meta, scale)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    t_tri = triton.testing.do_bench(partial(tri.forward, q, k, v, meta, scale), return_mode="median") * 1000
    # The PyTorch backend keeps its cache head-major ([blocks, Hkv, block_size, D]).
    kh, vh = k.permute(0, 2, 1, 3).contiguous(), v.permute(0, 2, 1, 3).contiguous()
    try:
        torch_fn = partial(torch_be.forward, q, kh, vh, meta, scale)
        t_torch = triton.testing.do_bench(torch_fn, return_mode="median") * 1000
    except Exception:
        t_torch = float("nan")
    kv_bytes = 2 * B * ctx * HKV * D * k.element_size()
    q_bytes = 2 * q.numel() * 2
    floor_us = (kv_bytes + q_bytes) / (BW * 1e9) * 1e6
    flops = 4 * B * q_len * ctx * H * D / (2 if q_len > 1 else 1)
    floor_us = max(floor_us, flops / 700e12 * 1e6)
    print(f"B={B:<4d} q={q_len:<5d} ctx={ctx:<6d}    {t_tri:10.1f} {t_torch:10.1f} {floor_us:9.1f} "
          f"{t_tri / floor_us:8.2f} {err:8.1e}")

# Prefill chunks over a long cached context: the unified kernel unsplit vs with the KV splits
# choose_chunk_splits picks (GPU time only; the split adds a second launch on the host).
from pagoda.attention import triton_kernels as tk  # noqa: E402

print(f"{'chunk case':28s} {'splits':>6s} {'unsplit us':>10s} {'split us':>9s}")
for q_len, ctx in [(100, 2100), (100, 8192), (100, 16384), (512, 16384)]:
    q, k, v, meta = make(1, q_len, ctx)
    s = max(2, tk.choose_chunk_splits(q_len, 1, HKV, H // HKV, D, q_len, ctx, tk.num_sms(dev)))
    args = (q, k, v, meta.query_start_loc, meta.seq_lens, meta.block_tables, q_len, D ** -0.5)
    t1 = triton.testing.do_bench(partial(tk.unified_attention, *args), return_mode="median") * 1000
    ts = triton.testing.do_bench(partial(tk.unified_attention, *args, num_splits=s), return_mode="median") * 1000
    print(f"q={q_len:<5d} ctx={ctx:<6d}              {s:6d} {t1:10.1f} {ts:9.1f}")
