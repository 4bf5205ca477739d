"""The CPU's LM head for a few rows from a GGUF Q8_0 table kept as the file stores it (``cpu_head_q8.c``, AVX-512).

A tied Q8_0 table (the default model's: 49152 x 576) is kept in bf16 on the CPU for the lookups and for oneDNN's
prepacked head at larger batches (:func:`pagoda.quantization.gguf._dense_table`). A decode step of up to
:data:`MAX_ROWS` rows reads the whole head for a handful of dot products, so there the bytes decide: this kernel reads
the int8 codes and a float32 scale per 32 (36 bytes per 32 weights against the bf16 copy's 64) and computes with the
table's exact values (the bf16 copy rounds ``d * q`` to 8 significant bits). The hidden rows are rounded to int16
with a power-of-two scale per row, exact for every element within 2**7 of the row's largest (the C file states the
arithmetic); logits come out float32.

Takes over from :mod:`pagoda.layers.cpu_head_dot` (the bf16 copy) where both apply, and supplies the leading logits'
exact values above :data:`MAX_ROWS` rows (:func:`Q8Head.entries`, used by :mod:`pagoda.layers.logits`), the same
bits as :func:`Q8Head.head` gives them, so a row's greedy token and leading logits do not depend on the side of
:data:`MAX_ROWS` it falls (unless the bf16 head above it leaves the true leader out of its 8 leading logits: 8 other
candidates within that head's error of it). The model uses it only where oneDNN's bf16 head serves the larger batches
(without it one bf16 head serves all). Used after a self-check against a float64 reference on CPUs with AVX-512 (F,
BW, VL, DQ), VNNI and FMA.
``ENABLED = False`` is the A/B switch (read at every call).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

_SOURCE = Path(__file__).with_name("cpu_head_q8.c")
_FLAGS = ("-O3", "-ffp-contract=off", "-shared", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
          "-mavx512vnni", "-mfma")
ENABLED = True
"""False: the bf16 copy's heads run instead (the A/B switch)."""
MAX_ROWS = 8
"""Hidden rows up to which :meth:`Q8Head.head` computes the logits (above: oneDNN's bf16 head and refinement)."""
ITEM_ROWS = 64
"""Vocabulary rows per work item of the thread team."""
GROUP = 32
"""Columns per scale (GGUF's Q8_0 block)."""

_P, _I = ctypes.c_void_p, ctypes.c_int64


class _Job(ctypes.Structure):
    _fields_ = [("xi", _P), ("s", _P), ("q", _P), ("d", _P), ("out", _P), ("m", _I), ("n", _I), ("k", _I),
                ("rows", _I)]


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    from pagoda.native import cpu_has, load_checked

    if not cpu_has("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "fma"):
        return None

    def prepare_and_check(lib: ctypes.CDLL) -> bool:
        lib.pagoda_q8_prepare.restype = ctypes.c_int
        lib.pagoda_q8_prepare.argtypes = [_P, _I, _I, _P, _P]
        lib.pagoda_q8_head_entries.restype = ctypes.c_int
        lib.pagoda_q8_head_entries.argtypes = [_P] * 7 + [_I] * 2
        return _self_check(lib)

    return load_checked(_SOURCE, _FLAGS, "the Q8_0 LM head", "pagoda_q8_head", [_P] * 5 + [_I] * 4,
                        prepare_and_check)


def available() -> bool:
    return _lib() is not None


@dataclass(frozen=True)
class Q8Head:
    """A ``[n, K]`` weight ``codes * scales`` (one scale per 32 columns) in the kernel's tiled layout
    (``cpu_head_q8.c``: ``codes`` int8 ``[T, K/2, 16, 2]``, ``scales`` float32 ``[T, K/32, 16]``, T = ceil(n / 16));
    build it with :meth:`pack`."""

    codes: torch.Tensor
    scales: torch.Tensor
    n: int

    @staticmethod
    def pack(codes: torch.Tensor, scales: torch.Tensor) -> Q8Head:
        """From int8 ``codes`` ``[n, K]`` (K a multiple of 32) and ``scales`` ``[n, K/32]`` (any float dtype, taken
        exactly as float32)."""
        if codes.dim() != 2 or codes.dtype != torch.int8 or codes.shape[1] % GROUP or scales.dim() != 2 \
                or tuple(scales.shape) != (codes.shape[0], codes.shape[1] // GROUP) or not scales.is_floating_point():
            raise ValueError(f"Q8_0 head: int8 codes [n, K] (K a multiple of {GROUP}) and scales [n, K/{GROUP}] "
                             f"expected, got {codes.dtype} {list(codes.shape)} and {scales.dtype} "
                             f"{list(scales.shape)}")
        n, k = codes.shape
        pad = -n % 16
        # k pairs moved as int16 (little-endian: the pair's bytes keep their order)
        q = F.pad(codes, (0, 0, 0, pad)).view(torch.int16).view(-1, 16, k // 2).transpose(1, 2).contiguous() \
            .view(torch.int8).view(-1, k // 2, 16, 2)
        d = F.pad(scales.float(), (0, 0, 0, pad)).view(-1, 16, k // GROUP).permute(0, 2, 1).contiguous()
        return Q8Head(q, d, n)

    @property
    def k(self) -> int:
        return self.codes.shape[1] * 2

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + self.scales.numel() * 4

    def dense(self) -> torch.Tensor:
        """The float32 weight ``[n, K]`` (tests, references)."""
        k = self.k
        q = self.codes.permute(0, 2, 1, 3).reshape(-1, k)[: self.n].float()
        d = self.scales.permute(0, 2, 1).reshape(-1, k // GROUP)[: self.n]
        return (q.view(self.n, k // GROUP, GROUP) * d.unsqueeze(-1)).view(self.n, k)

    def _applies(self, x: torch.Tensor) -> bool:
        return x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() == 2 and x.shape[1] == self.k

    def head(self, x: torch.Tensor) -> torch.Tensor | None:
        """float32 ``x @ W.T`` for bf16 ``x`` [M, K] (0 < M <= :data:`MAX_ROWS`) on the decoder stack's thread team,
        or None where this kernel does not apply (the caller runs its other head)."""
        if not ENABLED or not 0 < x.shape[0] <= MAX_ROWS or not self._applies(x):
            return None
        lib = _lib()
        return None if lib is None else _run(lib, self, x.contiguous(), team=True)

    def entries(self, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
        """float32 ``x[rows[i]] · W[cols[i]]`` for int64 index vectors, the same bits as :meth:`head` gives those
        entries; None where this kernel does not apply. ``ValueError`` for an index out of range."""
        if not ENABLED or not self._applies(x) or x.shape[0] == 0:
            return None
        lib = _lib()
        if lib is None:
            return None
        rows, cols = rows.to(torch.int64).contiguous(), cols.to(torch.int64).contiguous()
        if rows.shape != cols.shape or rows.dim() != 1 or (rows.numel() and (
                int(rows.min()) < 0 or int(rows.max()) >= x.shape[0] or int(cols.min()) < 0
                or int(cols.max()) >= self.n)):
            raise ValueError(f"Q8_0 head entries: row indices must lie in [0, {x.shape[0]}) and column indices in "
                             f"[0, {self.n}), as two 1-d tensors of one length")
        return _entries(lib, self, x.contiguous(), rows, cols)


def _prepare(lib: ctypes.CDLL, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xi = torch.empty(x.shape, dtype=torch.int16)
    s = torch.empty(x.shape[0], dtype=torch.int32)
    if lib.pagoda_q8_prepare(x.data_ptr(), x.shape[0], x.shape[1], xi.data_ptr(), s.data_ptr()) != 0:
        raise ValueError(f"Q8_0 head: hidden rows of shape {list(x.shape)} (K must be a multiple of {GROUP})")
    return xi, s


def _run(lib: ctypes.CDLL, w: Q8Head, x: torch.Tensor, team: bool) -> torch.Tensor:
    """The logits, on the thread team (``team``) or on the calling thread: also where the team is unavailable, since
    the rows of larger batches are refined with these bits (:meth:`Q8Head.entries`), never another head's."""
    xi, s = _prepare(lib, x)
    n, k = w.n, w.k
    out = torch.empty(x.shape[0], n, dtype=torch.float32)
    if team:
        from pagoda.models import cpu_decoder_stack  # the team's owner (one set of worker threads a process)

        job = _Job(xi.data_ptr(), s.data_ptr(), w.codes.data_ptr(), w.scales.data_ptr(), out.data_ptr(),
                   x.shape[0], n, k, ITEM_ROWS)
        if cpu_decoder_stack.team_run(_item_address(lib), ctypes.addressof(job), -(-n // ITEM_ROWS)):
            return out
    lib.pagoda_q8_head(xi.data_ptr(), s.data_ptr(), w.codes.data_ptr(), w.scales.data_ptr(), out.data_ptr(),
                       x.shape[0], n, k, ITEM_ROWS)
    return out


@lru_cache(maxsize=1)
def _item_address(lib: ctypes.CDLL) -> int:
    return ctypes.cast(lib.pagoda_q8_head_item, ctypes.c_void_p).value or 0


def _entries(lib: ctypes.CDLL, w: Q8Head, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    xi, s = _prepare(lib, x)
    out = torch.empty(rows.shape[0], dtype=torch.float32)
    lib.pagoda_q8_head_entries(xi.data_ptr(), s.data_ptr(), w.codes.data_ptr(), w.scales.data_ptr(), rows.data_ptr(),
                               cols.data_ptr(), out.data_ptr(), rows.shape[0], x.shape[1])
    return out


def error_bound(w: Q8Head, x: torch.Tensor) -> torch.Tensor:
    """A float64 bound on ``|head(x) - x @ W.T|`` (exact arithmetic): the int16 rounding of each hidden element
    (at most half a unit of ``2**-s``, s the row's scale exponent) plus float32 summation."""
    wd = w.dense().double()
    xd = x.double()
    mx = xd.abs().amax(dim=1).clamp_min(1e-300)
    unit = torch.exp2(torch.frexp(mx)[1].double() - 15)  # 2**-s
    return wd.abs().sum(dim=1)[None, :] * unit[:, None] * 0.5 + (xd.abs() @ wd.abs().t()) * 2.0**-20


def _self_check(lib: ctypes.CDLL) -> bool:
    gen = torch.Generator().manual_seed(2028)
    for n, k in ((203, 576), (128, 64), (67, 32)):  # n a multiple of 16 and not (a padded last tile)
        w = Q8Head.pack(torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8),
                        torch.rand(n, k // GROUP, generator=gen) * 0.01)
        x = (torch.randn(11, k, generator=gen) * torch.exp2(torch.randint(-6, 6, (11, 1), generator=gen))).to(
            torch.bfloat16)
        got = _run(lib, w, x, team=False)
        ref = x.double() @ w.dense().double().t()
        if not bool(((got.double() - ref).abs() <= error_bound(w, x) + 1e-30).all()):
            return False
        alone = (_run(lib, w, x[i : i + 1], team=False) for i in range(x.shape[0]))
        if not all(torch.equal(a[0], got[i]) for i, a in enumerate(alone)):
            return False
        rows = torch.randint(0, x.shape[0], (40,), generator=gen)
        cols = torch.randint(0, n, (40,), generator=gen)
        if not torch.equal(_entries(lib, w, x, rows, cols), got[rows, cols]):
            return False
    return True
