"""Programmatic dependent launch (PDL) for the Triton kernels of a decode step (CUDA, compute capability ≥ 9.0).

Why: a batch-1 decode step of the Llama-3-8B shape is ~10 kernels per layer, each of a few to tens of µs; between
two of them the GPU drains the first grid, then launches and ramps up the next (RESULTS.md, issue 21 item 5: the
step at 1.20× its bytes floor with every linear within 1.03-1.4× its own). With PDL a kernel is launched while its
predecessor still runs; it may do work that does not depend on the predecessor (a GEMV loads its first weight tile)
and then waits in ``griddepcontrol.wait`` until the predecessor has finished and its writes are visible.

Protocol, for every kernel that takes a ``USE_PDL`` constexpr (:func:`launch_kwargs` sets it with the launch flag):

* every program calls :func:`pdl_wait` before it reads anything an earlier kernel of the step may have written
  (activations, positions, the KV cache, the slot mapping) and before its first store, and calls it on every path
  (no early exit before it): a kernel that completes without having waited would let its own dependants run
  ahead of its predecessor. Before the wait a program may read only what no kernel writes during a step
  (weights, constant tables);
* every program calls :func:`pdl_launch_dependents` first, so that the next kernel launches once the last wave of
  this grid has started (measured the same as signalling after the wait, RESULTS.md session 11). A chain of such
  kernels runs ahead: each launched kernel lets the next launch, as far as the SMs have room for waiting programs.

Not every kernel gains: the 4-bit GEMV (``quantization/kernels/triton_w4_gemv.py``) measured 13 % slower with PDL
and launches plainly (RESULTS.md session 11).

A kernel launched without the flag is ordered as usual (a stream waits for the whole previous kernel), so mixing
PDL and plain launches (cuBLAS, torch) is safe: ordering only relaxes between two PDL-aware Triton kernels.
CUDA-graph capture keeps the relaxation as a programmatic edge (CUDA ≥ 12.3).

:data:`ENABLED` is read at launch (so at CUDA-graph capture): the A/B switch of ``benchmarks/gpu/decode_ab.py``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from pagoda import envs

ENABLED = True
"""False: every kernel launches plainly (as does ``PAGODA_PDL=0``)."""

_capable: dict[int, bool] = {}


def _triton_has_gdc() -> bool:
    try:
        from triton.language.extra import cuda as tl_cuda
    except ImportError:
        return False
    return hasattr(tl_cuda, "gdc_wait") and hasattr(tl_cuda, "gdc_launch_dependents")


def use_pdl(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL: :data:`ENABLED`, CUDA with compute capability ≥ 9.0, not under
    Triton's interpreter, and a Triton with ``griddepcontrol`` support."""
    if not ENABLED or device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1" or not envs.pdl_enabled():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    ok = _capable.get(index)
    if ok is None:
        ok = _capable[index] = torch.cuda.get_device_capability(index)[0] >= 9 and _triton_has_gdc()
    return ok


def launch_kwargs(device: torch.device) -> dict[str, bool]:
    """The launch's ``USE_PDL`` constexpr, plus Triton's ``launch_pdl`` option when it is on."""
    return {"USE_PDL": True, "launch_pdl": True} if use_pdl(device) else {"USE_PDL": False}


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """Block until the previous kernel of the stream has completed and its writes are visible (no-op off)."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def pdl_launch_dependents(USE_PDL: tl.constexpr):
    """Allow the next kernel of the stream to launch once every program of this grid has passed here (no-op off)."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
