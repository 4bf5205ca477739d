"""A Llama-family model's decoder layers for a small CPU step in one native call (``cpu_decoder_stack.c``).

A batch-1 decode step of the default model (30 layers, 4-bit linears, bf16) spent ~4.5 ms of its ~12 in Python and
torch dispatch between its kernels: ~150 µs a layer of module calls, views, splits, allocations, the KV write's
index copies and a dozen ctypes calls. The kernels themselves were already native (cpu_fused's norms, rotary and
silu * up, cpu_int4_dot's 4-bit matmuls, the native decode attention). :class:`DecoderStack` hands the same kernels,
as function pointers, to a C loop over the layers, with the same arguments in the same order, so a step's hidden
states are bitwise those of :meth:`pagoda.models.llama.LlamaForCausalLM.run_layers` (tested: tokens and
logprobs of decode steps, of steps holding several requests' rows, and of n-gram verify rows).

It takes a step when every part would run those kernels on the Python path: a bf16 Llama-family model on one
device (no tensor or pipeline parallelism, no EAGLE-3 layer outputs), every layer a plain :class:`DecoderLayer`
with the CPU-native norms, no q/k norms, full rotary, dense SiLU MLP, 4-bit linears served by
:mod:`~pagoda.quantization.kernels.cpu_int4_dot`'s bound calls (single plane, no bias, no dense copy, no input
permutation), a bf16 KV cache, no logit soft-cap; and per step: at most :data:`MAX_ROWS` rows, every request at
most ``TorchAttentionBackend.decode_like_rows`` rows (the native attention's rows), outside ``--deterministic``.
Anything else runs the Python path. ``ENABLED = False`` is the A/B switch (read at every step).

Threads. The call splits each 4-bit matmul's 64-column blocks and the attention's (rows, KV head) items over a team
of its own: the calling thread and :data:`THREADS` - 1 worker threads (default: torch's intra-op count), which spin
between the call's phases and sleep between calls. Under the passive OpenMP wait policy a small step runs torch on
one thread (``cpu_threads.SMALL_STEP_MAX_ROWS``), since waking a sleeping OpenMP thread for each of a step's ~150
kernels costs more than the second core gives; the team wakes once a step, so the second core streams weights too
(default model, 2-core dev VM: the batch-1 stack call 3.8 -> 2.6 ms). Items claim disjoint outputs and compute them
by the same arithmetic, so the bits do not depend on the split (tested against one thread and the Python path).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pagoda.attention import cpu_decode_native
from pagoda.attention.torch_ref import TorchAttentionBackend
from pagoda.layers import cpu_fused
from pagoda.quantization.kernels import cpu_int4_dot
from pagoda.worker import cpu_threads

if TYPE_CHECKING:
    from pagoda.attention.metadata import AttentionMetadata
    from pagoda.layers.rotary import RotaryEmbedding
    from pagoda.models.llama import LlamaForCausalLM, LlamaShape

_SOURCE = Path(__file__).with_name("cpu_decoder_stack.c")
ENABLED = True
"""False: every step runs the layers from Python (the A/B switch of ``benchmarks/cpu_switch_ab.py --switch
decoder-stack``; read at every step)."""
THREADS = 0
"""The stack's threads (its caller and ``THREADS - 1`` workers of its own); 0: torch's intra-op count outside the
one-thread block of small steps (:func:`pagoda.worker.cpu_threads.outer_threads`). 1 is the A/B switch of the team
(``benchmarks/cpu_switch_ab.py --switch stack-team``)."""
MAX_ROWS = 64
"""Steps of more rows run the Python path (the per-layer Python is then a small share of the step)."""
PHASE_CLOCKS = False
"""True before the library's first use: build it with per-phase wall clocks (``-DSTACK_PHASE_CLOCKS``;
:func:`phase_ns`), for ``benchmarks/spec_cpu_profile.py --phases``."""
PHASES = ("norm1", "qkv", "rope+kv", "attention", "o", "norm2", "gate_up", "silu*up", "down", "residual")

_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


class _Int4(ctypes.Structure):
    _fields_ = [("codes", _P), ("scales_zeros", _P), ("n", _I), ("k", _I), ("group", _I)]


class _Layer(ctypes.Structure):
    _fields_ = [("norm1", _P), ("norm2", _P), ("qkv", _Int4), ("o", _Int4), ("gate_up", _Int4), ("down", _Int4),
                ("k_cache", _P), ("v_cache", _P), ("eps1", _D), ("eps2", _D), ("scale", _D), ("window", _I)]


class _Stack(ctypes.Structure):
    _fields_ = [("norm", _P), ("rope", _P), ("silu_mul", _P), ("mm_prep", _P), ("mm_block", _P), ("mm_block1", _P),
                ("attn_scratch", _P),
                ("attn_runs", _P), ("attn_item", _P), ("attn_chunks", _P), ("attn_partials", _P),
                ("attn_combine", _P), ("layers", _P), ("cos", _P), ("sin", _P), ("num_layers", _I),
                ("hidden", _I), ("heads", _I), ("kv_heads", _I), ("head_dim", _I), ("inter", _I), ("block_size", _I),
                ("rope_rows", _I)]


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    from pagoda.native import load_library

    flags = ("-O2", "-pthread", "-shared", "-fPIC") + (("-DSTACK_PHASE_CLOCKS",) if PHASE_CLOCKS else ())
    lib = load_library(_SOURCE, flags, "the native decoder stack")
    if lib is None:
        return None
    lib.pagoda_decoder_stack.restype = ctypes.c_int
    lib.pagoda_decoder_stack.argtypes = [_P, _P, _I, _P, _P, _P, _I, _P, _P, _I, ctypes.c_int]
    lib.pagoda_team_run.restype = ctypes.c_int
    lib.pagoda_team_run.argtypes = [_P, _P, _I, ctypes.c_int]
    return lib


def phase_ns(reset: bool = True) -> dict[str, int] | None:
    """Wall nanoseconds per phase summed over every layer of every call since the last reset (None unless the
    library was built with :data:`PHASE_CLOCKS`); ``reset`` zeroes them."""
    lib = _lib()
    if lib is None or not PHASE_CLOCKS:
        return None
    arr = (ctypes.c_int64 * len(PHASES)).in_dll(lib, "pagoda_stack_phase_ns")
    out = dict(zip(PHASES, list(arr), strict=True))
    if reset:
        ctypes.memset(arr, 0, ctypes.sizeof(arr))
    return out


def _fn() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]  # ctypes' private base class
    lib = _lib()
    return None if lib is None else lib.pagoda_decoder_stack


def team_run(fn: int, ctx: int, n: int) -> bool:
    """Runs the native item function at address ``fn`` (C: ``void fn(void *ctx, int64_t item, int thread)``) for
    items ``0 .. n-1`` (n < 2**20) on this module's thread team (:data:`THREADS`); returns False, having run nothing,
    where the library is unavailable. The items must write disjoint outputs whose bits do not depend on the thread,
    and must not call back into the team."""
    lib = _lib()
    if lib is None:
        return False
    if lib.pagoda_team_run(fn, ctx, n, THREADS or cpu_threads.outer_threads()) != 0:
        raise ValueError(f"CPU thread team: {n} work items, outside [0, 2**20)")
    return True


def _addr(fn: Any) -> int:
    return ctypes.cast(fn, ctypes.c_void_p).value or 0


def _int4(linear: torch.nn.Module, keep: list[Any]) -> _Int4 | None:
    """``linear``'s bound 4-bit call as the C struct, when the Python path would run exactly that call for every
    row count this module takes (see the module docstring); the call joins ``keep`` (its tensors stay alive)."""
    from pagoda.quantization.awq import AWQLinearMethod
    from pagoda.quantization.compressed_tensors_methods import PackQuantizedLinearMethod
    from pagoda.quantization.gguf import GGUFLinearMethod
    from pagoda.quantization.gptq import GPTQLinearMethod
    from pagoda.quantization.int_weight import IntWeight

    w = getattr(linear, "int_weight", None)
    method = type(getattr(linear, "linear_method", None))
    if not isinstance(w, IntWeight) or getattr(linear, "bias", None) is not None or method not in (
            GGUFLinearMethod, GPTQLinearMethod, AWQLinearMethod, PackQuantizedLinearMethod):
        return None
    bound = w.bound_call
    if bound is None or w.dense_packed is not None or w.perm is not None or w.batch_invariant:
        return None
    keep.append(bound)
    packed, sz = bound._packed, bound._sz  # noqa: SLF001  # the call's own tensors: one source of the pointers
    return _Int4(packed.data_ptr(), sz.data_ptr(), bound._n, bound._k, bound._g)  # noqa: SLF001


class DecoderStack:
    """The C structs describing one model's layers (pointers into its tensors, which it keeps referenced, so a
    model moved or re-packed after its first step cannot leave them dangling), bound to one set of KV caches at a
    time."""

    def __init__(self, s: LlamaShape, rope: RotaryEmbedding, layers: list[_Layer], fns: tuple[int, ...],
                 keep: list[Any]) -> None:
        self._keep = keep  # the tensors (and bound calls) the structs point into: alive while this is
        self._layers = (_Layer * len(layers))(*layers)
        self._stack = _Stack(*fns, ctypes.addressof(self._layers), rope.cos.data_ptr(), rope.sin.data_ptr(),
                             len(layers), s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim,
                             s.intermediate_size, 0, rope.cos.shape[0])
        self._kv_key: tuple[int, ...] = ()
        self._kv_list: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __reduce__(self):  # a copied or pickled model binds again, to its own tensors (pointers cannot be copied)
        return _unbound, ()

    def _bind_kv(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        if kv_caches is self._kv_list:  # the list bound last (held, so not another list at its address): the
            return True                 # runner allocates a new list for new caches, never edits one (~50 µs a step)
        key = tuple(t.data_ptr() for kv in kv_caches for t in kv)
        if key == self._kv_key:
            self._kv_list = kv_caches
            return True
        k0 = kv_caches[0][0]
        if len(kv_caches) != len(self._layers) or any(
                t.dtype != torch.bfloat16 or not t.is_contiguous() or t.dim() != 4 or t.shape[1:] != k0.shape[1:]
                for kv in kv_caches for t in kv) or k0.shape[1] != self._stack.kv_heads or \
                k0.shape[3] != self._stack.head_dim:
            return False
        for layer, (k, v) in zip(self._layers, kv_caches, strict=True):
            layer.k_cache, layer.v_cache = k.data_ptr(), v.data_ptr()
        self._stack.block_size = k0.shape[2]
        self._kv_key, self._kv_list = key, kv_caches
        return True

    def run(self, h: torch.Tensor, positions: torch.Tensor, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
            meta: AttentionMetadata, backend: Any) -> torch.Tensor | None:
        """The hidden states after every layer (float32, a new tensor), or None where this step is not one it
        takes (then the caller runs the layers from Python)."""
        T = h.shape[0]
        if not (ENABLED and cpu_int4_dot.ENABLED and cpu_int4_dot.BOUND_CALLS and cpu_decode_native.ENABLED
                and cpu_fused.ENABLED) or not 0 < T <= MAX_ROWS or h.dtype != torch.float32 or \
                type(backend) is not TorchAttentionBackend or backend.batch_invariant or \
                max(meta.query_lens_cpu) > backend.decode_like_rows or not self._bind_kv(kv_caches):
            return None
        sel = cpu_decode_native.decode_rows(meta, backend.decode_like_rows)
        bt = meta.block_tables
        if bt.dtype != torch.int32 or bt.stride(-1) != 1:
            bt = bt.to(torch.int32).contiguous()
        out = h.contiguous().clone()
        pos = positions if positions.dtype == torch.int64 and positions.is_contiguous() else \
            positions.to(torch.int64).contiguous()
        slots = meta.slot_mapping
        if slots.dtype != torch.int64 or not slots.is_contiguous():
            slots = slots.to(torch.int64).contiguous()
        rc = _fn()(ctypes.addressof(self._stack), out.data_ptr(), T, pos.data_ptr(), slots.data_ptr(),  # type: ignore[misc]
                   bt.data_ptr(), bt.stride(0), sel.req.data_ptr(), sel.pos.data_ptr(), sel.max_pos,
                   THREADS or cpu_threads.outer_threads())
        if rc == -2:
            return None  # a position past the rotary table: the Python path raises its error
        if rc != 0:
            raise MemoryError(f"CPU decoder stack: a kernel failed (code {rc}; out of memory?)")
        return out


def _unbound() -> bool:
    return False  # LlamaForCausalLM._cpu_stack's "not bound yet"


def bind(model: LlamaForCausalLM) -> DecoderStack | None:
    """A :class:`DecoderStack` for ``model`` (a :class:`~pagoda.models.llama.LlamaForCausalLM` after loading), or
    None where some layer would not run the native kernels on the Python path (module docstring)."""
    from pagoda.models.llama import MLP, DecoderLayer

    s = getattr(model, "shape", None)
    rope = getattr(model, "rope", None)
    if s is None or rope is None or getattr(model, "tp", None) is not None or getattr(model, "pp", None) is not None \
            or getattr(model, "fused", True) or getattr(model, "aux_hidden_layers", ()) or rope.partial or \
            s.qk_norm or rope.cos.dtype != torch.bfloat16 or not rope.cos.is_contiguous() or \
            not rope.sin.is_contiguous() or s.head_dim > cpu_decode_native.MAX_HEAD_DIM:
        return None
    fn, int4, attn = _fn(), cpu_int4_dot.library(), cpu_decode_native._lib()  # noqa: SLF001
    if fn is None or int4 is None or attn is None or not cpu_fused.available():
        return None
    lib = cpu_fused._lib()  # noqa: SLF001
    assert lib is not None
    layers: list[_Layer] = []
    keep: list[Any] = [rope.cos, rope.sin]
    for layer in list(model.layers):
        if type(layer) is not DecoderLayer or not layer.cpu_native or type(layer.mlp) is not MLP or \
                not layer.mlp.cpu_native:
            return None
        attn_mod = layer.self_attn
        if attn_mod.attn_kwargs.get("logits_soft_cap") or attn_mod.num_heads != s.num_heads or \
                layer.mlp.inter != s.intermediate_size:
            return None
        parts = [_int4(m, keep) for m in (attn_mod.qkv_proj, attn_mod.o_proj, layer.mlp.gate_up_proj,
                                          layer.mlp.down_proj)]
        if any(p is None for p in parts):
            return None
        n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
        keep += [n1.weight, n2.weight]
        layers.append(_Layer(n1.weight.data_ptr(), n2.weight.data_ptr(), *parts, None, None, n1.eps, n2.eps,
                             attn_mod.scale, int(attn_mod.attn_kwargs.get("sliding_window") or 0)))
    # One-row matmuls: cpu_int4_dot.one_row_library's build, unless a weight must run one build at every row count
    # (speculative decoding where the builds can disagree: cpu_int4_dot.one_kernel_needed)
    from pagoda.quantization.int_weight import IntWeight

    one_kernel = any(isinstance(m, IntWeight) and m.one_kernel for m in model.modules())
    int4_1 = int4 if one_kernel else cpu_int4_dot.one_row_library()
    assert int4_1 is not None
    fns = (_addr(lib.pagoda_rms_norm), _addr(lib.pagoda_rope), _addr(lib.pagoda_silu_mul),
           _addr(int4.pagoda_int4_prepare_rows), _addr(int4.pagoda_int4_dot_block), _addr(int4_1.pagoda_int4_dot_block),
           _addr(attn.pagoda_decode_attention_scratch), _addr(attn.pagoda_decode_attention_runs),
           _addr(attn.pagoda_decode_attention_item), _addr(attn.pagoda_decode_attention_chunks),
           _addr(attn.pagoda_decode_attention_partials), _addr(attn.pagoda_decode_attention_combine))
    return DecoderStack(s, rope, layers, fns, keep)
