"""Per-device arrival counters of the Triton kernels whose last-arriving program finishes a tile (split-K GEMVs,
the split-KV decode's combine), CUDA or the CPU interpreter.

A program that has written its partial result bumps its tile's counter (release/acquire); the one that sees the
count reach the number of partials sums them in a fixed order and sets the counter back to zero. Invariants: one
zeroed int32 buffer per device, shared by every such kernel; each launch leaves the counters it used at zero, and
touches them only after its programmatic-dependent-launch wait (if it has one), so launches on one stream never
see each other's counts (the previous launch has completed). Captured CUDA graphs hold the buffer's address: it is
never allocated during a capture (:func:`arrival_counters` raises) and a buffer outgrown later is kept alive.
:func:`split_k_total` is the protocol's Triton side for a split-K tile (the bf16 and FP8 GEMVs; the 4-bit GEMV keeps
its own copy, whose sum issues 8 loads a round).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SLOTS = 1 << 16
"""Counters allocated per device up front (Llama-size decode launches use a few thousand)."""
_BUFFERS: dict[torch.device, torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown buffers: a captured graph may still address one


def arrival_counters(device: torch.device, n: int = 0) -> torch.Tensor:
    """The zeroed counters of ``device``, at least ``n`` (:data:`SLOTS` by default), grown when a launch needs
    more. Callers that may run first inside a CUDA-graph capture allocate ahead (call it once before capture)."""
    buf = _BUFFERS.get(device)
    if buf is None or buf.numel() < n:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{n} arrival counters needed on {device} while capturing a CUDA graph; they must be "
                               f"allocated before capture (pagoda.layers.arrival_counters)")
        if buf is not None:
            _RETIRED.append(buf)
        buf = torch.zeros(max(SLOTS, triton.next_power_of_2(max(n, 1))), dtype=torch.int32, device=device)
        _BUFFERS[device] = buf
    return buf


@triton.jit
def split_k_total(acc, ws_ptr, lock_ptr, tile, part, parts, at, keep, stride):
    """The protocol above for one tile of a split-K launch: store this program's float32 partial ``acc`` (slice
    ``part`` of ``parts``) at ``ws_ptr + part * stride + at`` (``keep``: the elements that exist) and arrive on
    counter ``tile``. Returns ``(last, total)``: ``last`` where this program arrived last (it has re-armed the
    counter), with ``total`` the partials summed in slice order ``0 .. parts-1`` (no float atomics: the same bits
    whatever the arrival order); zeros elsewhere. The caller finishes the tile where ``last``."""
    tl.store(ws_ptr + part * stride + at, acc, mask=keep)
    tl.debug_barrier()  # every thread's partial is stored before the one arrival below
    arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
    last = arrived == parts - 1
    total = tl.zeros(acc.shape, dtype=tl.float32)
    if last:
        for s in range(parts):
            total += tl.load(ws_ptr + s * stride + at, mask=keep, other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(lock_ptr + tile, 0)  # re-armed for the next launch (the others have arrived)
    return last, total
