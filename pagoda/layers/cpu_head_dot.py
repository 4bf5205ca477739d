"""The CPU's LM head for a few rows, by bf16 dot products (``cpu_head_dot.c``, AVX-512 with the BF16 extension).

For up to :data:`MAX_ROWS` hidden rows (decode steps of small batches, speculative verifies) the head reads the bf16
weight one vocabulary row after another on the native decoder stack's thread team
(:func:`pagoda.models.cpu_decoder_stack.team_run`) and returns float32 logits, nothing rounded to bf16. Above that,
oneDNN's prepacked bf16 matmul stays the head (its tiles win there) and this kernel supplies the exact values of each
row's leading logits (:func:`entries`, used by :mod:`pagoda.layers.logits`), the same bits as :func:`head` gives them,
so a row's greedy token and its 8 leading logits do not depend on which side of :data:`MAX_ROWS` it falls. Its
log-probabilities do, at the 1e-4 level (the normalizer sums the whole row: float32 logits here, bf16 ones with 8
refined above), and so do sampled tokens at such margins; ``--deterministic`` runs every row through one path.

Measured on the 2-core AVX-512-BF16 dev VM, the default model's 49152 x 576 head after a cache flush, two threads
(RESULTS.md, session 27): 1 row 1.71 ms against oneDNN + refinement 2.89 ms, 4 rows 2.21 / 2.45, 8 rows 2.70 / 2.89,
16 rows 5.22 / 4.62 (on a 16-core Xeon: 0.56 / 1.37 ms at 1 row). Used after a self-check (a float64 reference within
float32 summation error; rows alone == rows in a batch, bitwise; :func:`entries` == :func:`head`) on CPUs whose
``cpuid`` reports AVX512-BF16.
``ENABLED = False`` is the A/B switch (read at every call).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("cpu_head_dot.c")
_FLAGS = ("-O3", "-ffp-contract=off", "-shared", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
          "-mavx512bf16")
ENABLED = True
"""False: every row count runs oneDNN's head and the float32 refinement by torch (the A/B switch)."""
MAX_ROWS = 8
"""Hidden rows up to which :func:`head` computes the logits (measured crossover with oneDNN: between 8 and 16)."""
ITEM_ROWS = 64
"""Vocabulary rows per work item (the default model's head: 768 items)."""

_P, _I = ctypes.c_void_p, ctypes.c_int64


class _Job(ctypes.Structure):
    _fields_ = [("x", _P), ("w", _P), ("out", _P), ("m", _I), ("n", _I), ("k", _I), ("rows", _I)]


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    from pagoda.quantization.kernels.cpu_int4_dot import cpu_has_bf16_dot

    if not cpu_has_bf16_dot():
        return None
    from pagoda.native import load_checked

    def prepare_and_check(lib: ctypes.CDLL) -> bool:
        lib.pagoda_head_entries.restype = ctypes.c_int
        lib.pagoda_head_entries.argtypes = [_P] * 5 + [_I] * 2
        return _self_check(lib)

    return load_checked(_SOURCE, _FLAGS, "the bf16-dot LM head", "pagoda_head_dot", [_P] * 3 + [_I] * 4,
                        prepare_and_check)


def available() -> bool:
    return _lib() is not None


def _run(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, team: bool) -> torch.Tensor | None:
    """The logits, on the thread team (``team``; None where it is unavailable: the caller's multi-threaded head is
    then faster than this kernel on one thread) or on the calling thread."""
    out = torch.empty(x.shape[0], w.shape[0], dtype=torch.float32)
    job = _Job(x.data_ptr(), w.data_ptr(), out.data_ptr(), x.shape[0], w.shape[0], x.shape[1], ITEM_ROWS)
    if team:
        from pagoda.models import cpu_decoder_stack  # the team's owner (one set of worker threads a process)

        items = -(-w.shape[0] // ITEM_ROWS)
        ran = cpu_decoder_stack.team_run(_item_address(lib), ctypes.addressof(job), items)
        return out if ran else None
    lib.pagoda_head_dot(x.data_ptr(), w.data_ptr(), out.data_ptr(), x.shape[0], w.shape[0], x.shape[1], ITEM_ROWS)
    return out


@lru_cache(maxsize=1)
def _item_address(lib: ctypes.CDLL) -> int:
    return ctypes.cast(lib.pagoda_head_item, ctypes.c_void_p).value or 0


def _entries(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, rows: torch.Tensor,
             cols: torch.Tensor) -> torch.Tensor:
    out = torch.empty(rows.shape[0], dtype=torch.float32)
    lib.pagoda_head_entries(x.data_ptr(), w.data_ptr(), rows.data_ptr(), cols.data_ptr(), out.data_ptr(),
                            rows.shape[0], x.shape[1])
    return out


def _self_check(lib: ctypes.CDLL) -> bool:
    gen = torch.Generator().manual_seed(2027)
    for n, k in ((203, 576), (130, 100), (67, 32)):  # K a multiple of 32 and not (the masked last chunk)
        w = (torch.randn(n, k, generator=gen) * 0.1).to(torch.bfloat16)
        x = (torch.randn(11, k, generator=gen) * 3).to(torch.bfloat16)
        got = _run(lib, x, w, team=False)
        assert got is not None
        ref = x.double() @ w.double().t()
        tol = (x.double().abs() @ w.double().abs().t()) * 2.0**-20 + 1e-30
        if not bool(((got.double() - ref).abs() <= tol).all()):
            return False
        alone = (_run(lib, x[i : i + 1], w, team=False) for i in range(x.shape[0]))
        if not all(a is not None and torch.equal(a[0], got[i]) for i, a in enumerate(alone)):
            return False
        rows = torch.randint(0, x.shape[0], (40,), generator=gen)
        cols = torch.randint(0, n, (40,), generator=gen)
        if not torch.equal(_entries(lib, x, w, rows, cols), got[rows, cols]):
            return False
    return True


def _applies(x: torch.Tensor, w: torch.Tensor) -> bool:
    return x.dtype == torch.bfloat16 and w.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 2 \
        and w.dim() == 2 and x.shape[1] == w.shape[1] and w.is_contiguous()


def head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """float32 ``x @ w.T`` for bf16 ``x`` [M, K] (M <= :data:`MAX_ROWS`) and ``w`` [N, K], or None where this
    kernel does not apply (the caller runs its other head)."""
    if not ENABLED or not 0 < x.shape[0] <= MAX_ROWS or not _applies(x, w):
        return None
    lib = _lib()
    return None if lib is None else _run(lib, x.contiguous(), w, team=True)


def entries(x: torch.Tensor, w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
    """float32 ``x[rows[i]] · w[cols[i]]`` for int64 index vectors, the same bits as :func:`head` gives those
    entries; None where this kernel does not apply."""
    if not ENABLED or not _applies(x, w):
        return None
    lib = _lib()
    if lib is None:
        return None
    return _entries(lib, x.contiguous(), w, rows.to(torch.int64).contiguous(), cols.to(torch.int64).contiguous())
