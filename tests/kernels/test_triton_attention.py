"""Triton attention kernels against the PyTorch oracle.

Without a GPU the kernels run on CPU tensors in Triton's interpreter
(``TRITON_INTERPRET=1``, set before triton is imported); sizes are tiny because the
interpreter runs every program in Python. With a GPU the same tests run the compiled
kernels on CUDA tensors instead: interpreter mode is chosen when a kernel is
decorated, so setting it in a GPU session would also turn every later-imported
Triton kernel (e.g. the backend under tests/gpu) into the slow interpreted one.
"""

import os

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import

import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton")
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

from pagoda.attention import triton_kernels as tk  # noqa: E402
from pagoda.attention.backend import get_backend  # noqa: E402
from pagoda.attention.metadata import AttentionMetadata  # noqa: E402
from pagoda.attention.reference import ref_paged_attention, ref_write_kv  # noqa: E402

TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-2),
}


def make_batch(reqs, block_size, num_kv_heads, head_dim, group, dtype, seed=0, extra_blocks=3, pad_tokens=0):
    """Build a batch whose K/V cache already holds every position of every request.

    ``reqs`` is a list of ``(q_len, seq_len)``. Physical blocks are a random
    permutation (so block tables are non-contiguous and shuffled); a few spare
    blocks hold garbage that must never be read. ``pad_tokens`` appends query rows
    that belong to no request.
    """
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    blocks_per_req = [-(-s // block_size) for _, s in reqs]
    num_blocks = sum(blocks_per_req) + extra_blocks
    perm = list(range(num_blocks))
    rng.shuffle(perm)
    max_blocks = max(blocks_per_req + [1]) + 1  # a padded column
    block_tables = torch.zeros((len(reqs), max_blocks), dtype=torch.int32)
    k_cache = torch.randn((num_blocks, block_size, num_kv_heads, head_dim), generator=gen).to(dtype) * 50
    v_cache = torch.randn((num_blocks, block_size, num_kv_heads, head_dim), generator=gen).to(dtype) * 50
    nxt = 0
    for i, nb in enumerate(blocks_per_req):
        block_tables[i, :nb] = torch.tensor(perm[nxt : nxt + nb], dtype=torch.int32)
        nxt += nb
    # Real positions get sane values; the spare blocks keep the huge garbage above.
    for i, (_, s) in enumerate(reqs):
        for pos in range(s):
            b = int(block_tables[i, pos // block_size])
            k_cache[b, pos % block_size] = torch.randn((num_kv_heads, head_dim), generator=gen).to(dtype)
            v_cache[b, pos % block_size] = torch.randn((num_kv_heads, head_dim), generator=gen).to(dtype)

    q_lens = [q for q, _ in reqs]
    seq_lens = [s for _, s in reqs]
    qsl = [0]
    for q in q_lens:
        qsl.append(qsl[-1] + q)
    slots = []
    for i, (q, s) in enumerate(reqs):
        for pos in range(s - q, s):
            slots.append(int(block_tables[i, pos // block_size]) * block_size + pos % block_size)
    slots += [-1] * pad_tokens
    num_tokens = qsl[-1] + pad_tokens
    query = torch.randn((num_tokens, num_kv_heads * group, head_dim), generator=gen).to(dtype)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=block_tables,
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_lens_cpu=q_lens,
        seq_lens_cpu=seq_lens,
        is_decode_only=all(q == 1 for q in q_lens),
    )
    for name in ("query_start_loc", "seq_lens", "block_tables", "slot_mapping"):
        setattr(meta, name, getattr(meta, name).to(DEVICE))
    return query.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), meta


def run_unified(query, k_cache, v_cache, meta, scale, **kw):
    return tk.unified_attention(
        query, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
        meta.max_query_len, scale, num_real_tokens=sum(meta.query_lens_cpu), **kw,
    )


def run_split(query, k_cache, v_cache, meta, scale, num_splits, **kw):
    return tk.split_kv_decode(
        query, k_cache, v_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
        scale, num_splits, num_real_tokens=sum(meta.query_lens_cpu), **kw,
    )


# A mixed step: a fresh prefill crossing blocks, a prefill chunk over a cached prefix,
# decodes with an exactly-full last block / a one-token last block / a tiny context,
# and a chunk that ends on a block boundary.
MIXED = [(21, 21), (11, 27), (1, 33), (1, 32), (1, 17), (1, 1), (8, 16)]


@pytest.mark.parametrize(
    "group,head_dim,block_size,tiles",
    [
        (1, 64, 16, None),
        (3, 64, 16, None),
        (4, 64, 8, None),
        (4, 64, 16, (16, 16)),  # small tiles: many KV tiles, several q tiles per request
        (3, 48, 8, (16, 16)),  # non-power-of-2 head dim and GQA 3 (16 rows = 5 tokens x 3 heads)
        (1, 32, 8, (32, 16)),  # KV tile spans two cache blocks
    ],
)
def test_unified_mixed_batch_fp32(group, head_dim, block_size, tiles):
    query, k_cache, v_cache, meta = make_batch(MIXED, block_size, 2, head_dim, group, torch.float32, pad_tokens=2)
    scale = head_dim**-0.5
    kw = {} if tiles is None else dict(block_m=tiles[0], block_n=tiles[1])
    out = run_unified(query, k_cache, v_cache, meta, scale, **kw)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, scale)
    assert out.dtype == query.dtype and out.shape == query.shape
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unified_half_precision(dtype):
    query, k_cache, v_cache, meta = make_batch(MIXED, 16, 1, 64, 4, dtype, seed=1)
    scale = 64**-0.5
    out = run_unified(query, k_cache, v_cache, meta, scale, block_m=16, block_n=16)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, scale)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])


def test_unified_long_prefill_multiple_q_tiles():
    # 40 new tokens after a 30-token prefix, group 1, 16-row tiles: three q tiles whose
    # causal limits differ, and KV loops that mix unmasked and masked tiles.
    query, k_cache, v_cache, meta = make_batch([(40, 70), (3, 5)], 16, 1, 32, 1, torch.float32, seed=2)
    out = run_unified(query, k_cache, v_cache, meta, 0.3, block_m=16, block_n=16)
    torch.testing.assert_close(out, ref_paged_attention(query, k_cache, v_cache, meta, 0.3), **TOL[torch.float32])


@pytest.mark.parametrize("num_splits,group,block_size,tiles", [
    (2, 4, 16, (16, 16)), (8, 1, 8, (16, 16)), (3, 3, 8, (32, 16)),
])  # each split count and each head/tile shape once (the interpreter takes ~8 s per case)
def test_unified_with_kv_splits_matches_reference(num_splits, group, block_size, tiles):
    # Split KV for prefill chunks: each split's partial (m, l, acc) is combined per token and
    # head; splits past a tile's causal limit are empty (8 splits of a 1..3-tile range).
    query, k_cache, v_cache, meta = make_batch(MIXED + [(5, 70)], block_size, 2, 32, group, torch.float32,
                                               pad_tokens=3, seed=4)
    scale = 32**-0.5
    out = run_unified(query, k_cache, v_cache, meta, scale, block_m=tiles[0], block_n=tiles[1],
                      num_splits=num_splits)
    torch.testing.assert_close(out, ref_paged_attention(query, k_cache, v_cache, meta, scale), **TOL[torch.float32])
    assert torch.count_nonzero(out[sum(meta.query_lens_cpu):]) == 0  # padding rows stay zero


def test_unified_with_kv_splits_bf16():
    query, k_cache, v_cache, meta = make_batch([(7, 60), (1, 33)], 16, 1, 64, 4, torch.bfloat16, seed=5)
    out = run_unified(query, k_cache, v_cache, meta, 0.125, block_m=16, block_n=16, num_splits=3)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, 0.125)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[torch.bfloat16])


def test_choose_chunk_splits():
    # 100 new tokens over 8,000 cached, Llama-3-8B heads, H100: 56 programs -> 5 splits.
    assert tk.choose_chunk_splits(100, 1, 8, 4, 128, 100, 8100, 132) == 5
    assert tk.choose_chunk_splits(100, 1, 8, 4, 128, 100, 2100, 132) == 1  # short context: launch cost wins
    assert tk.choose_chunk_splits(4096, 4, 8, 4, 128, 1024, 1024, 132) == 1  # tiles fill the GPU
    assert tk.choose_chunk_splits(20, 1, 8, 4, 128, 20, 200, 132) == 1  # context too short to split
    assert tk.choose_chunk_splits(16, 1, 1, 1, 64, 16, 1 << 20, 132) == tk.MAX_CHUNK_SPLITS
    # a batch-1 verify of 5 rows (8 programs) recorded in a CUDA graph for 2,048-token contexts: the eager rule's
    # minimum context (a second launch's host cost) does not apply; each split still keeps >= 256 keys
    assert tk.choose_chunk_splits(5, 1, 8, 4, 128, 5, 2048, 132) == 1
    assert tk.choose_chunk_splits(5, 1, 8, 4, 128, 5, 2048, 132, min_context=0) == 8
    assert tk.choose_chunk_splits(5, 1, 8, 4, 128, 5, 4096, 132, min_context=0) == 16
    assert tk.choose_chunk_splits(5, 1, 8, 4, 128, 5, 200, 132, min_context=0) == 1  # < 256 keys: no split


def test_zero_length_request_in_batch():
    query, k_cache, v_cache, meta = make_batch([(5, 9), (0, 4), (1, 20)], 8, 1, 32, 2, torch.float32, seed=3)
    out = run_unified(query, k_cache, v_cache, meta, 0.2, block_m=16, block_n=16)
    torch.testing.assert_close(out, ref_paged_attention(query, k_cache, v_cache, meta, 0.2), **TOL[torch.float32])


@pytest.mark.parametrize(
    "group,num_splits,block_n,block_size",
    [
        (1, 4, 16, 16),
        (3, 7, 16, 8),  # more splits than some requests have tiles: empty splits
        (4, 3, 32, 16),
        (4, 1, 64, 16),  # degenerate single split
    ],
)
@pytest.mark.parametrize("fused", [True, False], ids=["fused-combine", "reduce-kernel"])
def test_split_kv_decode(group, num_splits, block_n, block_size, fused, monkeypatch):
    """Both ways of combining the splits (the last split of each request and KV head, or a second kernel) against
    the reference; the fused way leaves its arrival counters at zero."""
    monkeypatch.setattr(tk, "FUSED_SPLIT_COMBINE", fused)
    reqs = [(1, 300), (1, 257), (1, 64), (1, 1), (1, 129)]
    query, k_cache, v_cache, meta = make_batch(reqs, block_size, 2, 64, group, torch.float32, seed=4)
    scale = 64**-0.5
    out = run_split(query, k_cache, v_cache, meta, scale, num_splits, block_n=block_n)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, scale)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    if fused:
        from pagoda.layers.arrival_counters import arrival_counters

        assert int(arrival_counters(query.device).abs().sum()) == 0
        again = run_split(query, k_cache, v_cache, meta, scale, num_splits, block_n=block_n)
        assert torch.equal(again, out)  # the combine sums in split order, whichever split arrives last


def test_split_kv_decode_bf16_head_dim_48():
    query, k_cache, v_cache, meta = make_batch([(1, 200), (1, 33)], 16, 1, 48, 3, torch.bfloat16, seed=5)
    out = run_split(query, k_cache, v_cache, meta, 0.15, 5, block_n=16)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, 0.15)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[torch.bfloat16])


def test_write_kv_skips_negative_slots_and_accepts_strided_input():
    gen = torch.Generator().manual_seed(6)
    num_tokens, hkv, d, bs, nb = 7, 2, 48, 8, 5
    qkv32 = torch.randn((num_tokens, (4 + 2 * hkv) * d), generator=gen)  # fused projection output
    slots = torch.tensor([17, -1, 0, 39, -1, 8, 23], dtype=torch.int64, device=DEVICE)
    for dtype in (torch.float32, torch.bfloat16):
        qkv = qkv32.to(device=DEVICE, dtype=dtype)
        key = qkv[:, 4 * d : (4 + hkv) * d].view(num_tokens, hkv, d)  # non-contiguous views
        value = qkv[:, (4 + hkv) * d :].view(num_tokens, hkv, d)
        assert not key.is_contiguous()
        k_cache = torch.randn((nb, bs, hkv, d), generator=gen).to(device=DEVICE, dtype=dtype)
        v_cache = torch.randn((nb, bs, hkv, d), generator=gen).to(device=DEVICE, dtype=dtype)
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        tk.write_kv(key, value, k_cache, v_cache, slots)
        ref_write_kv(key, value, k_ref, v_ref, slots)
        assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
        # The skipped tokens' values were written nowhere.
        for t in (1, 4):
            assert not (k_cache == key[t].to(dtype)).all(dim=(-1, -2)).any()


@pytest.mark.parametrize("reqs", [MIXED, [(1, 300), (1, 70), (1, 5)]])
def test_backend_write_then_forward(reqs):
    """Full layer step through the registry: write the new tokens' K/V, then attend."""
    backend = get_backend("triton")
    assert backend.name == "triton"
    query, k_full, v_full, meta = make_batch(reqs, 16, 2, 32, 2, torch.float32, seed=7, pad_tokens=1)
    # Caches holding only the cached prefix; the new tokens come in through write_kv.
    gen = torch.Generator().manual_seed(8)
    key = torch.randn((query.shape[0], 2, 32), generator=gen).to(DEVICE)
    value = torch.randn((query.shape[0], 2, 32), generator=gen).to(DEVICE)
    k_cache, v_cache = k_full.clone(), v_full.clone()
    k_ref, v_ref = k_full.clone(), v_full.clone()
    backend.write_kv(key, value, k_cache, v_cache, meta.slot_mapping)
    ref_write_kv(key, value, k_ref, v_ref, meta.slot_mapping)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)

    splits = backend.num_splits(query, k_cache, meta)
    assert (splits > 1) == meta.is_decode_only  # long decode batch -> split-KV path
    out = backend.forward(query, k_cache, v_cache, meta, 0.25)
    ref = ref_paged_attention(query, k_ref, v_ref, meta, 0.25)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    assert torch.all(out[sum(meta.query_lens_cpu) :] == 0)  # padding rows


@pytest.mark.parametrize("unsplit", [True, False], ids=["decode-kernel", "unified-kernel"])
def test_large_decode_batch_without_split(unsplit, monkeypatch):
    """A decode batch whose programs fill the GPU takes no split: the decode kernel with one split (each program
    storing its own output) or, switched off, the unified kernel; both equal the reference, padding rows stay 0."""
    monkeypatch.setattr(tk, "UNSPLIT_DECODE_KERNEL", unsplit)
    backend = get_backend("triton")
    reqs = [(1, 1 + (7 * i) % 45) for i in range(70)]  # 70 requests x 2 KV heads >= 132 programs: no split
    query, k_cache, v_cache, meta = make_batch(reqs, 16, 2, 32, 2, torch.float32, seed=9, pad_tokens=2)
    assert meta.is_decode_only and backend.num_splits(query, k_cache, meta) == 1
    calls = []
    real_split = tk.split_kv_decode
    monkeypatch.setattr(tk, "split_kv_decode", lambda *a, **k: calls.append(a[7]) or real_split(*a, **k))
    out = backend.forward(query, k_cache, v_cache, meta, 0.25)
    assert calls == ([1] if unsplit else [])  # the kernel that ran: one split of the decode kernel, or unified
    ref = ref_paged_attention(query, k_cache, v_cache, meta, 0.25)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    assert torch.all(out[len(reqs):] == 0)


def test_choose_num_splits():
    # batch-1 decode at 1k context on an H100 (132 SMs), 8 KV heads -> 128 programs
    assert tk.choose_num_splits(1, 8, 1024, 132) == 16
    assert tk.choose_num_splits(1, 8, 1024, 132) * 8 >= 100
    assert tk.choose_num_splits(1, 8, 32768, 132) == 33  # aims at 2 x SMs
    assert tk.choose_num_splits(1, 8, 100, 132) == 1  # too short to split
    assert tk.choose_num_splits(32, 8, 4096, 132) == 1  # batch already fills the GPU
    assert tk.choose_num_splits(1, 1, 1 << 20, 132) == tk.MAX_SPLITS


def test_rejects_unsupported_shapes():
    query, k_cache, v_cache, meta = make_batch([(1, 4)], 8, 1, 32, 2, torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        run_unified(query[:, :1].repeat(1, 3, 1), torch.cat([k_cache] * 2, 2), torch.cat([v_cache] * 2, 2), meta, 1.0)
    big = torch.zeros((2, 8, 1, 288), device=DEVICE)
    with pytest.raises(ValueError, match="head_dim"):
        run_unified(torch.zeros((1, 1, 288), device=DEVICE), big, big, meta, 1.0)
    with pytest.raises(TypeError):
        run_unified(query.double(), k_cache.double(), v_cache.double(), meta, 1.0)


def test_import_pagoda_backend_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "from pagoda.attention.backend import get_backend\n"
        "b = get_backend('triton')\n"
        "assert b.name == 'triton'\n"
        "try:\n"
        "    b.write_kv(None, None, None, None, None)\n"
        "except ImportError as e:\n"
        "    assert 'triton' in str(e)\n"
        "else:\n"
        "    raise SystemExit('expected ImportError')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the --smoke mode runs the kernels in the CPU interpreter")
def test_decode_attn_sweep_smoke(monkeypatch, capsys):
    """benchmarks/gpu/decode_attn_sweep.py --smoke runs (interpreter, one tiny case) and checks every launch."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_bench_smoke import run_smoke

    run_smoke(monkeypatch, "benchmarks/gpu/decode_attn_sweep.py")
    out = capsys.readouterr().out
    assert "[tiny] batch 1, context 40, 2 splits" in out and "WRONG" not in out and "n16 w4" in out


def test_decode_block_n_rule():
    """32-key tiles for wide rows, or when the bound the split count was chosen for leaves <= 128 keys per split."""
    from pagoda.attention.triton_kernels import decode_block_n

    assert decode_block_n(True, None, 1) == 32
    assert decode_block_n(False, None, 16) == 64  # no bound given: the 64-key default
    assert decode_block_n(False, 1024, 16) == 32 and decode_block_n(False, 4096, 64) == 32
    assert decode_block_n(False, 4096, 17) == 64 and decode_block_n(False, 4096, 1) == 64


def test_tail_keys_rule(monkeypatch):
    """TAIL_TILE_KEYS (off by default): 16-row tiles walk their causal tail in that many keys, at most block_n and at
    least 16; larger tiles keep block_n."""
    assert tk.TAIL_TILE_KEYS is None and tk.tail_keys(16, 64) == 64
    monkeypatch.setattr(tk, "TAIL_TILE_KEYS", 16)
    assert tk.tail_keys(16, 64) == 16 and tk.tail_keys(16, 32) == 16 and tk.tail_keys(64, 64) == 64
    monkeypatch.setattr(tk, "TAIL_TILE_KEYS", 128)
    assert tk.tail_keys(16, 64) == 64


@pytest.mark.parametrize("window", [None, 13])
def test_tail_tiles_match_the_reference(monkeypatch, window):
    """With TAIL_TILE_KEYS = 16, the unified kernel's 16-row tiles (decodes, small chunks, a window) and the split-KV
    decode kernel (partial last tiles of 1-63 keys, splits whose last tile is partial) against the oracle."""
    monkeypatch.setattr(tk, "TAIL_TILE_KEYS", 16)
    reqs = [(1, 70), (1, 64), (1, 1), (2, 33), (4, 100), (1, 127)]
    query, k_cache, v_cache, meta = make_batch(reqs, 16, 2, 32, 4, torch.float32, seed=21, pad_tokens=1)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, 0.25, sliding_window=window)
    for kw in ({}, {"num_splits": 2}):
        out = run_unified(query, k_cache, v_cache, meta, 0.25, block_m=16, sliding_window=window, **kw)
        torch.testing.assert_close(out, ref, **TOL[torch.float32])
    decodes = [(1, 70), (1, 64), (1, 1), (1, 127), (1, 200)]
    query, k_cache, v_cache, meta = make_batch(decodes, 16, 2, 32, 4, torch.float32, seed=22)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, 0.25, sliding_window=window)
    for splits in (1, 3):
        out = run_split(query, k_cache, v_cache, meta, 0.25, splits, block_n=64, sliding_window=window)
        torch.testing.assert_close(out, ref, **TOL[torch.float32])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the --smoke mode runs the kernels in the CPU interpreter")
def test_fp8_attention_sweep_smoke(monkeypatch, capsys):
    """benchmarks/gpu/fp8_attention_sweep.py --smoke runs (interpreter, one tiny case): the two FP8 tile widths agree
    up to the softmax weights' fp16 rounding (each tile rounds its own), and the bf16 cache differs from the FP8 one by
    the cache's rounding; the FP8 cache stored head-major (``@hm``) gives the served layout's outputs."""
    import re
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_bench_smoke import run_smoke

    run_smoke(monkeypatch, "benchmarks/gpu/fp8_attention_sweep.py")
    out = capsys.readouterr().out
    errs = {m[0]: float(m[1]) for m in re.findall(r"(\S+/\S+/(?:decode1/)?\d+): .*err vs fp8/bf16 (\S+)\)", out)}
    assert set(errs) == {"fp8/bf16/16", "fp8/bf16/32", "bf16/bf16/16", "fp8@hm/bf16/16", "bf16@hm/bf16/32",
                         "fp8/bf16/decode1/16"}, out
    assert errs["fp8/bf16/16"] == 0.0 and errs["fp8/bf16/32"] < 1e-3 and 1e-3 < errs["bf16/bf16/16"] < 0.1
    assert errs["fp8@hm/bf16/16"] == 0.0 and 1e-3 < errs["bf16@hm/bf16/32"] < 0.1
    assert errs["fp8/bf16/decode1/16"] == 0.0  # the decode kernel with one split: the unified kernel's sums
