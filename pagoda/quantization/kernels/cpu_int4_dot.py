"""Int4 weight-only matmul by bf16 dot products (``cpu_int4_dot.c``, AVX-512 with the BF16 extension).

Reads torch's AVX-512 int4pack layout (what :mod:`cpu_woq` packs) with bf16 activations, like
``aten::_weight_int4pack_mm_for_cpu``, but computes each group's ``sum a[k] (q - 8)`` with ``vdpbf16ps`` (exact
bf16 x small-integer products, fp32 sums) and applies the group's scale and zero point once per group
(``scale * S + zero * sum a``), where torch's kernel dequantizes every weight and runs one fp32 FMA per weight and
row. So a weight costs half the instructions per row, and the dequantization is one table lookup shared by all rows:
measured on the 2-core AVX-512 dev VM, one thread, the default model's four linears x 30 layers
(``benchmarks/RESULTS.md``, session 24): 1 row 6.4 -> 3.5 ms, 5 rows 16.0 -> 7.7 ms, 32 rows 70 -> 39 ms.

The values are not torch's int4pack bits (another rounding order, as accurate: both are within a bf16 rounding of
the exact product). What the engine relies on holds by construction and is checked at load: a row's result does
not depend on the other rows or their number, so a speculative verify's rows equal decode rows and deterministic
mode holds, as long as one kernel serves every row count: :func:`cpu_woq.int4_matmul` runs this one for every row
count up to its dequantize-once prefill path whenever :func:`available`.

Used after a self-check (against a float64 reference within a bf16 rounding, and each row alone against the same
row in a batch, bitwise) on CPUs whose ``cpuid`` reports AVX512-BF16 and whose torch uses the 64-column int4pack
layout; anything else keeps :mod:`cpu_int4_native` (torch's arithmetic, bitwise). ``ENABLED = False`` is the A/B
switch (read at every call: flip it only between runs).

On CPUs with AMX-BF16 the same source is also built with ``-DINT4_DOT_AMX`` (:data:`AMX`, ``PAGODA_CPU_AMX``): a
group's sums for up to 16 rows are tile products, the rest as above. It serves calls of two rows and more; one-row
calls keep the vdpbf16ps build (:func:`one_row_library`: AMX was 0.91-0.92x at batch 1). Measured on the 2-core AMX
Xeon dev VM (``benchmarks/RESULTS.md``, session 34): the default model's decode 1.40x at batch 2, 2.14-2.16x at 4-32;
a 5-row verify's linears ~2x.

The two builds give the same bits (session 37): the kernel first rounds each row's group of k's to a grid fine enough
to leave every element within ``b - 8`` binades of the group's largest unchanged (8 at groups of 32, 6 at 128:
:func:`grid_bits`, :func:`grid_round`; the C file's header),
on which a group's sum of bf16 x small-integer products is exact in fp32 whatever the order of its additions, so the
tile product's order and ``vdpbf16ps``'s agree. :func:`builds_agree` checks it at load. Only where it does not hold
(groups above the grid's limit, per-channel weights, or a failed check) does a caller that needs one answer at every
row count run one build for all (``one_kernel``: :func:`one_kernel_needed`; ``--deterministic``'s ``per_row``).
Before that rounding a speculating engine had to run AMX for its one-row steps too (~13 % slower decodes), and its
greedy tokens still differed from a non-speculating engine's at near-ties (9 of 20 essay prompts within 160 tokens).
"""

from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from pathlib import Path

import torch

from pagoda import envs

logger = logging.getLogger("pagoda")

_SOURCE = Path(__file__).with_name("cpu_int4_dot.c")
_FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl",
          "-mavx512dq", "-mavx512bf16", "-mfma")
_AMX_FLAGS = (*_FLAGS, "-DINT4_DOT_AMX", "-mamx-tile", "-mamx-bf16")
ENABLED = True
"""False: 4-bit planes run :mod:`cpu_int4_native` / torch's int4pack arithmetic (the A/B switch)."""
AMX = envs.cpu_amx_enabled()
"""False: the vdpbf16ps build even where the CPU has AMX (``PAGODA_CPU_AMX=0``; the A/B switch, read by
:func:`library`)."""
BOUND_CALLS = True
"""False: every call goes through :func:`cpu_woq.int4_matmul`'s checks, never a :class:`BoundCall` (the A/B switch of
the per-call Python cost; the values are the same)."""

_ARGS = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 5


def cpu_has_bf16_dot() -> bool:
    """``cpuid`` says AVX512-BF16 (with the AVX-512 subsets the kernel uses): the instruction will not fault."""
    from pagoda.native import cpu_has

    return cpu_has("avx512_bf16", "avx512f", "avx512bw", "avx512vl", "avx512dq", "fma")


def library() -> ctypes.CDLL | None:
    """The compiled kernel after its self-check (``pagoda_int4_dot_mm``; ``pagoda_int4_prepare_rows`` and
    ``pagoda_int4_dot_block`` for callers that run the column blocks on their own threads), or None where it does
    not serve this machine: the AMX build where the CPU has AMX-BF16 (and :data:`AMX`), else the vdpbf16ps one.
    Engines bind it at load (the decoder stack, each weight's :class:`BoundCall`); flip :data:`AMX` only between
    engine loads."""
    return (_amx_library() if AMX else None) or _plain_library()


def one_row_library() -> ctypes.CDLL | None:
    """The build for one-row calls: the vdpbf16ps one where :func:`library` is the AMX build (a tile product pays
    its stores and loads for one row: measured ~8 % slower at batch 1), else :func:`library` itself. A caller whose
    rows must not depend on their number (``one_kernel``: speculative decoding's verify rows = its decode rows,
    ``--deterministic``) runs :func:`library` at every row count instead."""
    lib = library()
    return _plain_library() if lib is not None and lib is _amx_library() else lib


@lru_cache(maxsize=1)
def _plain_library() -> ctypes.CDLL | None:
    from pagoda.quantization.kernels import cpu_int4_native

    if cpu_int4_native.width() != 64 or not cpu_has_bf16_dot():
        return None
    from pagoda.native import load_checked

    return load_checked(_SOURCE, _FLAGS, "the bf16-dot int4 kernel", "pagoda_int4_dot_mm", _ARGS,
                        lambda lib: _self_check(lib.pagoda_int4_dot_mm))


def cpu_has_amx() -> bool:
    """``cpuid`` says AMX tiles with bf16 products (besides :func:`cpu_has_bf16_dot`'s extensions)."""
    from pagoda.native import cpu_has

    return cpu_has_bf16_dot() and cpu_has("amx_tile", "amx_bf16")


@lru_cache(maxsize=1)
def _amx_library() -> ctypes.CDLL | None:
    """The AMX build, after the kernel asked Linux for the tile state and passed the same self-check."""
    from pagoda.quantization.kernels import cpu_int4_native

    if cpu_int4_native.width() != 64 or not cpu_has_amx():
        return None
    from pagoda.native import load_checked, load_library

    lib = load_library(_SOURCE, _AMX_FLAGS, "the AMX int4 kernel")
    if lib is None:
        return None
    if lib.pagoda_int4_amx_init() != 0:  # an older kernel, or a sandbox that refuses arch_prctl
        logger.info("CPU: Linux did not grant AMX's tile state; the 4-bit kernel stays on vdpbf16ps")
        return None
    return load_checked(_SOURCE, _AMX_FLAGS, "the AMX int4 kernel", "pagoda_int4_dot_mm", _ARGS,
                        lambda lib: _self_check(lib.pagoda_int4_dot_mm))


def _kernel(rows: int = 2, one_kernel: bool = False) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """``pagoda_int4_dot_mm`` of the build that serves ``rows`` rows (:func:`one_row_library`)."""
    lib = library() if rows > 1 or one_kernel else one_row_library()
    return None if lib is None else lib.pagoda_int4_dot_mm


def _call(fn, x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor | None:
    m, k = x.shape
    out = torch.empty(m, packed.shape[0], dtype=torch.bfloat16)
    rc = fn(x.data_ptr(), packed.data_ptr(), sz.data_ptr(), out.data_ptr(), m, packed.shape[0], k, group_size,
            torch.get_num_threads())
    return out if rc == 0 else None


GRID_MAX_GROUP = 256
"""Groups up to this many k's are rounded to their grid (``cpu_int4_dot.c``'s ``GRID_MAX_GROUP``, which
:func:`_builds_agree_check` reads back from the library)."""


def grid_bits(group_size: int) -> int:
    """The grid's bits for a group size: the most (at most 16) with ``G * 8 * (2^b - 1) < 2^24``."""
    b = 0
    while b < 16 and group_size * 8 * (2 ** (b + 1) - 1) < 2**24:
        b += 1
    return b


def grid_round(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """bf16 rows ``x`` [M, K] as the kernel's dots read them (``cpu_int4_dot.c``, "Activations on the group grid"):
    each group of ``group_size`` k's rounded, half to even, to multiples of ``2^(e + 1 - b)`` for its largest ``|a|``
    in ``[2^e, 2^(e+1))``; a group whose largest ``|a|`` is below ``2^-100`` zeroed, one with inf or NaN unchanged;
    groups above :data:`GRID_MAX_GROUP` unchanged."""
    if group_size > GRID_MAX_GROUP:
        return x
    m, k = x.shape
    g = x.double().view(m, k // group_size, group_size)
    amax = g.abs().amax(-1, keepdim=True)
    _, e = torch.frexp(amax)  # amax = f * 2^e, f in [0.5, 1): amax in [2^(e-1), 2^e)
    step = torch.ldexp(torch.ones_like(amax), (e - grid_bits(group_size)).to(torch.int32))
    out = torch.where(amax < 2.0**-100, torch.zeros_like(g), torch.round(g / step) * step)
    out = torch.where(torch.isfinite(amax), out, g)
    return out.view(m, k).to(x.dtype)


def reference(x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor,
              magnitude: bool = False) -> torch.Tensor:
    """The exact ``x' @ W.T`` in float64 for ``x' = grid_round(x)`` (what the kernel's dots read); ``magnitude``:
    ``|x'| @ |W|.T`` instead (the scale of rounding errors)."""
    from pagoda.quantization.kernels.cpu_woq import unpack_int4

    x = grid_round(x, group_size)
    q = unpack_int4([(packed, sz)], x.shape[1], group_size).double() - 8
    s, z = sz[..., 0].double().t()[..., None], sz[..., 1].double().t()[..., None]  # [n, groups, 1]
    n, k = q.shape
    if magnitude:
        x, q, s, z = x.abs(), q.abs(), s.abs(), z.abs()
    w = q.view(n, -1, group_size) * s + z
    return x.double() @ w.view(n, k).t()


def _self_check(fn) -> bool:
    gen = torch.Generator().manual_seed(4321)
    for n, k, g in ((128, 256, 32), (192, 128, 128), (64, 64, 64), (320, 96, 32)):
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        if tuple(packed.shape) != (n, k // 2):  # not the layout this kernel reads
            return False
        sz = (torch.randn(k // g, n, 2, generator=gen) * 0.1).to(torch.bfloat16)
        x = (torch.randn(50, k, generator=gen) * 4).to(torch.bfloat16)  # from 48 rows the AMX build's panel path
        got = _call(fn, x, packed, g, sz)
        if got is None:
            return False
        ref = reference(x, packed, g, sz)
        # within a bf16 rounding of the exact value, plus fp32 summation error
        tol = ref.abs() * 2.0**-8 + reference(x, packed, g, sz, magnitude=True) * 2.0**-18
        if not bool(((got.double() - ref).abs() <= tol).all()):
            return False
        for m in (1, 2, 3, 4, 5, 7, 8, 9, 13, 17, 20, 50):  # each row alone = the same row among m (every path)
            part = _call(fn, x[:m], packed, g, sz)
            alone = [_call(fn, x[i : i + 1], packed, g, sz) for i in range(m)]
            if part is None or any(a is None for a in alone) or \
                    not torch.equal(part.view(torch.int16), got[:m].view(torch.int16)) or \
                    not torch.equal(torch.cat(alone).view(torch.int16), part.view(torch.int16)):  # type: ignore[arg-type]
                return False
    return True


def builds_agree() -> bool:
    """Whether every row gets the same bits from the AMX build as from the vdpbf16ps build at groups up to
    :data:`GRID_MAX_GROUP` (checked once: random rows and weights, groups 32 / 128 / 256, 1-20 and 50 rows); True
    where only one build serves this machine (or :data:`AMX` is off)."""
    return _builds_agree(AMX)


@lru_cache(maxsize=2)
def _builds_agree(amx_on: bool) -> bool:
    amx, plain = (_amx_library() if amx_on else None), _plain_library()
    if amx is None or plain is None:
        return True
    ok = _builds_agree_check(amx, plain)
    if not ok:
        logger.warning("CPU: the AMX and vdpbf16ps builds of the 4-bit kernel disagree on grid-rounded rows; a "
                       "speculating engine runs the AMX build for every row count")
    return ok


def _builds_agree_check(amx: ctypes.CDLL, plain: ctypes.CDLL) -> bool:
    if amx.pagoda_int4_grid_max_group() != GRID_MAX_GROUP or plain.pagoda_int4_grid_max_group() != GRID_MAX_GROUP:
        return False
    gen = torch.Generator().manual_seed(97)
    for n, k, g in ((128, 512, 32), (64, 512, 128), (64, 512, 256)):
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = (torch.randn(k // g, n, 2, generator=gen) * 0.1).to(torch.bfloat16)
        # rows with a wide spread of magnitudes in each group (small elements move on the grid)
        x = (torch.randn(50, k, generator=gen) * torch.exp(torch.randn(50, k, generator=gen) * 4)).to(torch.bfloat16)
        for m in (1, 2, 5, 9, 16, 20, 50):
            a = _call(amx.pagoda_int4_dot_mm, x[:m], packed, g, sz)
            b = _call(plain.pagoda_int4_dot_mm, x[:m], packed, g, sz)
            if a is None or b is None or not torch.equal(a.view(torch.int16), b.view(torch.int16)):
                return False
    return True


def one_kernel_needed(group_size: int) -> bool:
    """Whether a weight of this group size must run one build at every row count for its rows not to depend on
    their number (speculative decoding's verify rows = decode rows): only where the builds can disagree."""
    return group_size > GRID_MAX_GROUP or not builds_agree()


def available() -> bool:
    return ENABLED and _kernel() is not None


class BoundCall:
    """One 4-bit weight's kernel call with its pointers and sizes bound: ~4.6 µs of Python a call where
    :func:`~pagoda.quantization.int_weight.int_weight_linear`'s general path takes ~16 (120 such calls a decode step
    of the default model). Holds references to the packed tensors, so the pointers stay valid; the same kernel and
    values as the general path (which the caller takes whenever :meth:`takes` says no)."""

    __slots__ = ("_fn", "_fn1", "_packed", "_sz", "_ptrs", "_n", "_k", "_g")

    def __init__(self, fn, fn1, packed: torch.Tensor, sz: torch.Tensor, in_features: int, group_size: int) -> None:
        """``fn``: the kernel of several rows, ``fn1``: of one row (:func:`one_row_library`)."""
        self._fn, self._fn1, self._packed, self._sz = fn, fn1, packed, sz
        self._ptrs = (packed.data_ptr(), sz.data_ptr())
        self._n, self._k, self._g = packed.shape[0], in_features, group_size

    def __reduce__(self):  # copies and pickles bind again to the copied tensors (a ctypes pointer cannot be copied)
        return bind, (self._packed, self._sz, self._k, self._g)

    def takes(self, x: torch.Tensor) -> bool:
        """``x`` is what the bound call computes: contiguous bf16 rows of this weight's width, at least one."""
        return ENABLED and BOUND_CALLS and x.dtype == torch.bfloat16 and x.dim() == 2 and x.shape[0] > 0 and \
            x.shape[1] == self._k and x.is_contiguous()

    def __call__(self, x: torch.Tensor, one_kernel: bool = False) -> torch.Tensor:
        """``one_kernel``: the several-row kernel for one row too (:func:`one_row_library`)."""
        m = x.shape[0]
        out = torch.empty(m, self._n, dtype=torch.bfloat16)
        fn = self._fn1 if m == 1 and not one_kernel else self._fn
        if fn(x.data_ptr(), *self._ptrs, out.data_ptr(), m, self._n, self._k, self._g, torch.get_num_threads()) != 0:
            raise RuntimeError("the bf16-dot int4 kernel refused a call it had accepted at load (out of memory?)")
        return out


def bind(packed: torch.Tensor, sz: torch.Tensor, in_features: int, group_size: int) -> BoundCall | None:
    """A :class:`BoundCall` for one int4pack plane with bf16 scales on the CPU, or None where this kernel does not
    serve it (then every row count of the weight takes another kernel or the general path)."""
    if packed.device.type != "cpu" or sz.dtype != torch.bfloat16 or packed.shape[0] % 64 or group_size % 2 or \
            not packed.is_contiguous() or not sz.is_contiguous():
        return None
    fn, fn1 = _kernel(), _kernel(1)
    return None if fn is None or fn1 is None else BoundCall(fn, fn1, packed, sz, in_features, group_size)


def int4_dot_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor,
                one_kernel: bool = False) -> torch.Tensor | None:
    """``x @ W.T`` for a torch int4pack weight (64-column layout) by this kernel's arithmetic (bf16 ``x`` and
    ``sz``), or None where it does not apply (wrong dtypes or shapes: the caller runs another kernel for every row
    count of that weight, never for some rows only). ``one_kernel``: one build for every row count
    (:func:`one_row_library`)."""
    if x.dtype != torch.bfloat16 or sz.dtype != torch.bfloat16 or x.device.type != "cpu" or packed.shape[0] % 64 \
            or group_size % 2:
        return None
    fn = _kernel(x.shape[0], one_kernel)
    if fn is None:
        return None
    return _call(fn, x.contiguous(), packed.contiguous(), group_size, sz.contiguous())
