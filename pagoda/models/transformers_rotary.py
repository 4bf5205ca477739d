"""The transformers fallback's rotary embedding as one fused launch per layer, where HF computes exactly that.

HF's modeling files each define ``apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)``: ``q * cos +
rotate_half(q) * sin`` and the same for k, about ten small kernels per layer (slices, a negation, a concatenation,
products and sums), which a CUDA-graph decode step of a small batch pays as launch latency. pagoda's
:func:`~pagoda.layers.fused_kernels.rope_cos_sin` does both in one launch.

A modeling module's function is replaced only if (a) its signature is ``(q, k, cos, sin[, position_ids],
unsqueeze_dim=1)`` and (b) on random float32 CPU inputs (random cos/sin, so no property of real tables is
assumed) it computes the rotate-half formula; checked once per module. Interleaved (GPT-J) rotations, partial
rotary dims handled inside the function, or anything else fail (b) and keep HF's function.

The replacement is scoped: :meth:`RotaryFusion.active` installs the fused functions in their modules only for the
duration of pagoda's forward (so CUDA graphs capture them) and puts HF's back after, so an HF model run in the same
process (a test's reference, the start-up probe's comparison) computes with HF's own code. A call the kernel does
not take (CPU tensors, ``unsqueeze_dim != 1``, a ``position_ids`` argument, a cos/sin narrower than the head: a
partial rotary, which GPT-NeoX's function slices itself) runs HF's function.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

FUNCTION = "apply_rotary_pos_emb"


def reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotate-half formula the fused kernel computes (``cos``/``sin`` ``[B, T, D]``, q/k ``[B, H, T, D]``)."""
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    return q * c + rot(q) * s, k * c + rot(k) * s


def _signature_fits(fn: Callable[..., Any]) -> bool:
    # transformers >= 5.25 wraps the function in a module (a kernel-hub hook point): its forward is the function
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    names = [p.name for p in params]
    if names[:4] != ["q", "k", "cos", "sin"] or any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in params):
        return False
    rest = {p.name: p.default for p in params[4:]}
    return rest in ({"unsqueeze_dim": 1}, {"position_ids": None, "unsqueeze_dim": 1})


@torch.inference_mode()
def computes_rope(fn: Callable[..., Any]) -> bool:
    """(a) and (b) of the module docstring."""
    if not _signature_fits(fn):
        return False
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 3, 8, generator=g), torch.randn(2, 2, 3, 8, generator=g)
    cos, sin = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    try:
        got = fn(q, k, cos, sin)
    except Exception:  # any other calling convention or arithmetic: not ours to replace
        return False
    want = reference(q, k, cos, sin)
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
        return False
    return all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
               for a, b in zip(got, want, strict=True))


def _fits(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """The kernel's shapes: q ``[B, Hq, T, D]``, k ``[B, Hk, T, D]``, cos and sin ``[B, T, D]`` over the whole head (a
    narrower cos is a partial rotary, e.g. GPT-NeoX's ``rotary_pct``, which HF's function slices itself)."""
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.shape != cos.shape:
        return False
    B, _, T, D = q.shape
    return k.shape[0] == B and k.shape[2:] == (T, D) and tuple(cos.shape) == (B, T, D)


def _fused(original: Callable[..., Any]) -> Callable[..., Any]:
    """HF's ``original`` with calls the kernel takes sent to :func:`~pagoda.layers.fused_kernels.rope_cos_sin`."""
    names = list(inspect.signature(original).parameters)[4:]  # [position_ids,] unsqueeze_dim

    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             *args: Any, **kwargs: Any) -> Any:
        extra = {**dict(zip(names, args, strict=False)), **kwargs}
        if (extra.get("unsqueeze_dim", 1) == 1 and extra.get("position_ids") is None and q.is_cuda
                and _fits(q, k, cos, sin) and q.dtype == k.dtype == cos.dtype == sin.dtype):
            from pagoda.layers.fused_kernels import rope_cos_sin

            return rope_cos_sin(q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.__wrapped__ = original  # type: ignore[attr-defined]
    return apply_rotary_pos_emb


class RotaryFusion:
    """The verified modeling modules of one HF model and their fused functions (module docstring)."""

    def __init__(self, model: nn.Module | None) -> None:
        self.swaps: list[tuple[Any, Callable[..., Any], Callable[..., Any]]] = []  # (module, HF's, fused)
        for name in sorted({type(m).__module__ for m in model.modules()} if model is not None else ()):
            module = sys.modules.get(name)
            fn = getattr(module, FUNCTION, None)
            if module is None or not callable(fn) or not computes_rope(fn):
                continue
            self.swaps.append((module, fn, _fused(fn)))

    @classmethod
    def none(cls) -> RotaryFusion:
        """No function replaced (the CPU path, or before :meth:`__init__` ran on a model)."""
        return cls(None)

    def __len__(self) -> int:
        return len(self.swaps)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The fused functions installed for the duration of the block (HF's restored after, even on error)."""
        for module, _, fused in self.swaps:
            setattr(module, FUNCTION, fused)
        try:
            yield
        finally:
            for module, original, _ in self.swaps:
                setattr(module, FUNCTION, original)
