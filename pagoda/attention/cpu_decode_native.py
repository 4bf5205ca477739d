"""The native kernel for a CPU step's decode rows and few-row runs (``cpu_decode_attention.c`` beside this file).

The torch path (:class:`pagoda.attention.torch_ref.TorchAttentionBackend`) gathers each request's whole K/V out of
the paged cache every layer and runs SDPA, one call per verify row so that verify rows equal decode rows bitwise.
This kernel reads the paged cache in place, converts each K/V row once for all the query heads and rows that share
it, and computes each (row, head) by the same arithmetic whatever the step holds (the C file's comment), so verify
rows equal decode rows by construction. Used for bf16 and float32 queries over caches of the same dtype, without a
logit soft-cap; an FP8 cache, float16, a soft-cap or a machine without a C compiler keep the torch path. Compiled on
first use (``pagoda.native``) and used only after a self-check against a float64 reference.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch

from pagoda.attention.metadata import AttentionMetadata

_SOURCE = Path(__file__).with_name("cpu_decode_attention.c")
ENABLED = True
"""False: the torch path (the A/B switch of ``benchmarks/cpu_switch_ab.py --switch decode-native``; read at call
time)."""

POS_CHUNK = 0
"""Positions per chunk of the kernel's work items past that position (0: none), as :func:`set_pos_chunk` last set
it (assigning this name changes nothing). Off: on the 2-vCPU dev VM chunks of 256 cost ~10 % at 3,000 positions and
gained nothing (RESULTS.md, session 28); meant for many-core CPUs, where a batch-1 decode otherwise has one item per
KV head. Set it once per process, before the first step: a long row's bits depend on it (the tests and the A/B
switch change it between runs on purpose)."""

MAX_HEAD_DIM = 512
"""The kernel's largest head_dim (its merge of position chunks keeps one head's sums on the stack)."""

_P = ctypes.c_void_p
_I = ctypes.c_int64


def _flags() -> tuple[str, ...]:
    from pagoda.native import isa_flags

    return ("-O3", "-fno-math-errno", "-fno-trapping-math", *isa_flags(), "-fopenmp", "-shared", "-fPIC")


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    from pagoda.native import load_checked

    return load_checked(_SOURCE, _flags(), "the native decode attention kernel", "pagoda_decode_attention",
                        [_P, _I, _I, _P, _P, _I, _I, _P, _I, _P, _P, _I, _I, _I, _I, ctypes.c_float, _I,
                         ctypes.c_int, ctypes.c_int, _P], _self_check)


def _self_check(lib: ctypes.CDLL) -> bool:
    lib.pagoda_decode_attention_set_chunk.argtypes = [_I]
    lib.pagoda_decode_attention_set_chunk.restype = None
    try:
        return _checks(lib)
    finally:
        lib.pagoda_decode_attention_set_chunk(POS_CHUNK)


def _checks(lib: ctypes.CDLL) -> bool:
    """Three requests (a 5-row run over scattered blocks, a decode row, a 19-row run cut in two groups) in bf16 and
    float32, with and without a window, head dims 24 and 64 (the kernel's generic and register-blocked sums), against
    a float64 dense causal softmax: within the bf16 output rounding (2e-2) and 1e-5; then a 3-row run past position
    512 in chunks of 256 (three merged), with and without a window that starts in another chunk."""
    lib.pagoda_decode_attention_set_chunk(0)
    if not all(_check_head_dim(lib, d) for d in (24, 64)):
        return False
    lib.pagoda_decode_attention_set_chunk(256)
    return _check_chunks(lib)


def _check_chunks(lib: ctypes.CDLL) -> bool:
    g = torch.Generator().manual_seed(1)
    bs, d, s_len = 16, 64, 601
    blocks = torch.randperm(40, generator=g)[: -(-s_len // bs)].tolist()
    k64 = torch.randn(40, 1, bs, d, generator=g, dtype=torch.float64)
    v64 = torch.randn(40, 1, bs, d, generator=g, dtype=torch.float64)
    q64 = torch.randn(3, 3, d, generator=g, dtype=torch.float64)
    bt = torch.tensor([blocks], dtype=torch.int32)
    kk = torch.cat([k64[b] for b in blocks], dim=1)[:, :s_len].repeat_interleave(3, 0)
    vv = torch.cat([v64[b] for b in blocks], dim=1)[:, :s_len].repeat_interleave(3, 0)
    qpos = torch.arange(s_len - 3, s_len)[:, None]
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float32, 1e-5)):
        for window in (None, 300):
            out = _launch(lib, q64.to(dtype), k64.to(dtype), v64.to(dtype), bt, torch.zeros(3, dtype=torch.int32),
                          qpos[:, 0].to(torch.int32), s_len - 1, 0.2, window).double()
            s = torch.einsum("qhd,hkd->hqk", q64.to(dtype).double(), kk.to(dtype).double()) * 0.2
            vis = torch.arange(s_len)[None, :] <= qpos
            if window is not None:
                vis &= torch.arange(s_len)[None, :] > qpos - window
            ref = torch.einsum("hqk,hkd->qhd", torch.softmax(s.masked_fill(~vis, float("-inf")), -1),
                               vv.to(dtype).double())
            if not (out - ref).abs().max().item() < tol:
                return False
    return True


def _check_head_dim(lib: ctypes.CDLL, d: int) -> bool:
    g = torch.Generator().manual_seed(0)
    hkv, bs, h = 2, 4, 6
    k64 = torch.randn(14, hkv, bs, d, generator=g, dtype=torch.float64)
    v64 = torch.randn(14, hkv, bs, d, generator=g, dtype=torch.float64)
    q64 = torch.randn(25, h, d, generator=g, dtype=torch.float64)
    tables = [[7, 2, 9, 0, 5], [3, 1], [4, 6, 8, 10, 11, 12]]
    q_lens, s_lens = [5, 1, 19], [19, 6, 23]
    starts = [0, 5, 6]
    row_req = [r for r, n in enumerate(q_lens) for _ in range(n)]
    row_pos = [p for n, s in zip(q_lens, s_lens, strict=True) for p in range(s - n, s)]
    bt = torch.tensor([t + [0] * (6 - len(t)) for t in tables], dtype=torch.int32)
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float32, 1e-5)):
        for window in (None, 7):
            q, k, v = q64.to(dtype), k64.to(dtype), v64.to(dtype)
            out = _launch(lib, q, k, v, bt, torch.tensor(row_req, dtype=torch.int32),
                          torch.tensor(row_pos, dtype=torch.int32), max(row_pos), 0.3, window).double()
            for r, (first, n, s_len) in enumerate(zip(starts, q_lens, s_lens, strict=True)):
                kk = torch.cat([k[b] for b in tables[r]], dim=1)[:, :s_len].double().repeat_interleave(h // hkv, 0)
                vv = torch.cat([v[b] for b in tables[r]], dim=1)[:, :s_len].double().repeat_interleave(h // hkv, 0)
                s = torch.einsum("qhd,hkd->hqk", q[first:first + n].double(), kk) * 0.3
                qpos = torch.arange(s_len - n, s_len)[:, None]
                vis = torch.arange(s_len)[None, :] <= qpos
                if window is not None:
                    vis &= torch.arange(s_len)[None, :] > qpos - window
                ref = torch.einsum("hqk,hkd->qhd", torch.softmax(s.masked_fill(~vis, float("-inf")), -1), vv)
                if not (out[first:first + n] - ref).abs().max().item() < tol:
                    return False
    return True


def set_pos_chunk(positions: int) -> None:
    """Sets :data:`POS_CHUNK` and the kernel's chunk (the decoder stack's calls share the library)."""
    global POS_CHUNK
    POS_CHUNK = max(int(positions), 0)
    lib = _lib()
    if lib is not None:
        lib.pagoda_decode_attention_set_chunk(ctypes.c_int64(POS_CHUNK))


def eligible(query: torch.Tensor, k_cache: torch.Tensor, cap: float | None) -> bool:
    return (ENABLED and cap is None and query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float32)
            and query.shape[-1] <= MAX_HEAD_DIM and k_cache.dtype == query.dtype and query.stride(-1) == 1
            and k_cache.is_contiguous() and _lib() is not None)


class DecodeRows(NamedTuple):
    """The step's rows this kernel takes (:func:`decode_rows`), made once per step."""

    rows: torch.Tensor  # int64 [T']: their indices in the step's query
    req: torch.Tensor  # int32 [T']: each row's request (a row of the block tables)
    pos: torch.Tensor  # int32 [T']: each row's position
    max_pos: int


def attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
              sel: DecodeRows, scale: float, window: int | None) -> torch.Tensor:
    """query [T', H, D]: the rows of ``sel`` (a request's rows consecutive); caches [N, Hkv, bs, D] contiguous, of
    query's dtype; ``block_tables`` int32 [B, *] (unit last stride) -> [T', H, D]."""
    lib = _lib()
    assert lib is not None
    return _launch(lib, query, k_cache, v_cache, block_tables, sel.req, sel.pos, sel.max_pos, scale, window)


def _launch(lib: ctypes.CDLL, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            block_tables: torch.Tensor, row_req: torch.Tensor, row_pos: torch.Tensor, max_pos: int, scale: float,
            window: int | None) -> torch.Tensor:
    T, H, D = query.shape
    out = torch.empty(T, H, D, dtype=query.dtype)
    if T == 0:
        return out
    k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    bt = block_tables if block_tables.dtype == torch.int32 and block_tables.stride(-1) == 1 else \
        block_tables.to(torch.int32).contiguous()
    rc = lib.pagoda_decode_attention(
        query.data_ptr(), query.stride(0), query.stride(1), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[1],
        k_cache.shape[2], bt.data_ptr(), bt.stride(0), row_req.data_ptr(), row_pos.data_ptr(), T, H, D, max_pos,
        float(scale), int(window or 0), int(query.dtype == torch.bfloat16), torch.get_num_threads(), out.data_ptr())
    if rc != 0:  # -2 (head_dim) is excluded by eligible()
        raise MemoryError("decode attention: the native kernel could not allocate its scratch memory")
    return out


def decode_rows(meta: AttentionMetadata, max_rows: int) -> DecodeRows:
    """Every row of each request with at most ``max_rows`` query rows (decode rows, speculative verifies, short
    chunks), in step order."""
    rows: list[int] = []
    req: list[int] = []
    pos: list[int] = []
    start = 0
    for i, (q_len, s_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu, strict=True)):
        if q_len <= max_rows:
            rows.extend(range(start, start + q_len))
            req.extend([i] * q_len)
            pos.extend(range(s_len - q_len, s_len))
        start += q_len
    return DecodeRows(torch.tensor(rows, dtype=torch.long), torch.tensor(req, dtype=torch.int32),
                      torch.tensor(pos, dtype=torch.int32), max(pos) if pos else 0)
