"""The native kernel of CPU ``--deterministic`` attention (``cpu_det_attention.c`` beside this file).

Each (query row, head) is computed alone in a fixed order (the C file's comment), so the output is batch-invariant
by construction, with no padding: the torch path of :mod:`pagoda.attention.deterministic` pads decode rows to 16
GEMM columns and gathers whole key blocks. Used for bf16 and float32 queries with caches of the same dtype; an FP8
cache, float16, or a machine without a C compiler keeps the torch path. Compiled on first use (``pagoda.native``)
and used only after a self-check against a float64 reference on random rows.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import torch

from pagoda.attention.metadata import AttentionMetadata

_SOURCE = Path(__file__).with_name("cpu_det_attention.c")
ENABLED = True
"""False: the torch path (the A/B switch of ``benchmarks/cpu_switch_ab.py --switch det-native``; read at call
time)."""

_P = ctypes.c_void_p
_I = ctypes.c_int64


def _flags() -> tuple[str, ...]:
    from pagoda.native import isa_flags

    return ("-O3", "-ffp-contract=off", "-fno-math-errno", *isa_flags(), "-fopenmp", "-shared", "-fPIC")


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    from pagoda.native import load_checked

    return load_checked(_SOURCE, _flags(), "the native deterministic attention kernel", "pagoda_det_attention",
                        [_P, _I, _I, _P, _P, _I, _I, _P, _I, _P, _P, _I, _I, _I, _I, ctypes.c_float, _I,
                         ctypes.c_float, ctypes.c_int, _P], _self_check)


def _self_check(lib: ctypes.CDLL) -> bool:
    """Two requests (a 19-position prefill chunk over scattered cache blocks, a decode row) in bf16 and float32
    against a float64 dense causal softmax: within the bf16 output rounding (2e-2) and 1e-5."""
    g = torch.Generator().manual_seed(0)
    hkv, bs, d, h = 2, 4, 24, 6
    k64 = torch.randn(10, hkv, bs, d, generator=g, dtype=torch.float64)
    v64 = torch.randn(10, hkv, bs, d, generator=g, dtype=torch.float64)
    q64 = torch.randn(20, h, d, generator=g, dtype=torch.float64)
    tables = [[7, 2, 9, 0, 5], [3, 1]]
    meta = AttentionMetadata(torch.tensor([0, 19, 20], dtype=torch.int32), torch.tensor([19, 6], dtype=torch.int32),
                             torch.tensor([t + [0] * (5 - len(t)) for t in tables], dtype=torch.int32),
                             torch.zeros(20, dtype=torch.long), 19, 19, [19, 1], [19, 6], is_decode_only=False)
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float32, 1e-5)):
        q, k, v = q64.to(dtype), k64.to(dtype), v64.to(dtype)
        out = _call(lib, q, k, v, meta, 0.3, None, None).double()
        for r, (first, n, s_len) in enumerate(((0, 19, 19), (19, 1, 6))):
            kk = torch.cat([k[b] for b in tables[r]], dim=1)[:, :s_len].double().repeat_interleave(h // hkv, 0)
            vv = torch.cat([v[b] for b in tables[r]], dim=1)[:, :s_len].double().repeat_interleave(h // hkv, 0)
            s = torch.einsum("qhd,hkd->hqk", q[first:first + n].double(), kk) * 0.3
            vis = torch.arange(s_len)[None, :] <= torch.arange(s_len - n, s_len)[:, None]
            ref = torch.einsum("hqk,hkd->qhd", torch.softmax(s.masked_fill(~vis, float("-inf")), -1), vv)
            if not (out[first:first + n] - ref).abs().max().item() < tol:
                return False
    return True


def eligible(query: torch.Tensor, k_cache: torch.Tensor) -> bool:
    return (ENABLED and query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float32)
            and k_cache.dtype == query.dtype and query.stride(-1) == 1 and _lib() is not None)


def attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
              scale: float, window: int | None, cap: float | None) -> torch.Tensor:
    """query [T, H, D]; caches [N, Hkv, bs, D] contiguous, of query's dtype -> [T, H, D] (see module docstring)."""
    lib = _lib()
    assert lib is not None
    return _call(lib, query, k_cache, v_cache, meta, scale, window, cap)


_rows_cache: tuple[AttentionMetadata, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] | None = None


def _rows(meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Each query row's request and position (int32), the block tables as int32, the largest position: built once
    per step (``meta`` is the step's, shared by every layer)."""
    global _rows_cache
    if _rows_cache is not None and _rows_cache[0] is meta:
        return _rows_cache[1]
    req: list[int] = []
    pos: list[int] = []
    for i, (q_len, s_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu, strict=True)):
        req.extend([i] * q_len)
        pos.extend(range(s_len - q_len, s_len))
    rows = (torch.tensor(req, dtype=torch.int32), torch.tensor(pos, dtype=torch.int32),
            meta.block_tables.to(torch.int32).contiguous(), max(pos))
    _rows_cache = (meta, rows)
    return rows


def _call(lib: ctypes.CDLL, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
          scale: float, window: int | None, cap: float | None) -> torch.Tensor:
    T, H, D = query.shape
    out = torch.empty(T, H, D, dtype=query.dtype)
    if T == 0:
        return out
    k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    row_req, row_pos, bt, max_pos = _rows(meta)
    rc = lib.pagoda_det_attention(
        query.data_ptr(), query.stride(0), query.stride(1), k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[1],
        k_cache.shape[2], bt.data_ptr(), bt.stride(0), row_req.data_ptr(), row_pos.data_ptr(), T, H, D, max_pos,
        float(scale), int(window or 0), float(cap or 0.0), int(query.dtype == torch.bfloat16), out.data_ptr())
    if rc != 0:
        raise MemoryError("deterministic attention: the native kernel could not allocate its scratch memory")
    return out
