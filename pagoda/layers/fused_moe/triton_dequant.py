"""Dequantizing a weight tile inside the fused-MoE kernels (modes of :mod:`.quantized`).

The kernels load codes and scales tile by tile and turn them into float32 weights in registers, so a quantized
expert's bytes cross memory once, as codes. :func:`kernel_args` gives a launch the pointers, strides and
constexprs of a dense ``[E, N, K]`` tensor or a :class:`~.quantized.StackedWeight`; the jit helpers decode.

* FP8: ``NATIVE`` uses Triton's float8e4nv conversion (compute capability >= 8.9); otherwise (older GPUs, the
  interpreter) the codes are read as uint8 and sign, exponent and mantissa moved into an fp16 bit pattern, which
  is the e4m3 value times 2**-8 (normals and subnormals alike), times 256 after (exact).
* Integer codes: ``code * scale + offset``; 4-bit codes are two per byte, the even input in the low nibble, so a
  kernel walks the packed bytes and pairs the low nibbles with even activations, the high with odd ones.

Scales are indexed ``scale[e, n // SN, k // SK]``. ``S_ROW`` (host-decided: ``SK`` a multiple of the kernel's
K step) means one scale column per K step, loaded as a row vector instead of gathered per element.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from pagoda.layers.fused_moe.quantized import MODE_FP8, MODE_PLAIN, StackedWeight


@triton.jit
def fp8_to_f32(q, NATIVE: tl.constexpr):
    """float8_e4m3 codes (or their uint8 bytes when not ``NATIVE``) -> float32 values."""
    if NATIVE:  # (e4m3 -> fp16 is exact; Triton converts float8 to 16-bit floats only)
        return q.to(tl.float16).to(tl.float32)
    else:
        b = q.to(tl.int16)
        h = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
        return h.to(tl.float16, bitcast=True).to(tl.float32) * 256.0


@dataclass(frozen=True)
class WeightArgs:
    """What a launch passes for one expert weight (a dense tensor or a stacked quantized one)."""

    w: torch.Tensor  # the dense weight, the codes (float8 or uint8)
    s: torch.Tensor  # scales (the weight itself when dense: never read)
    o: torch.Tensor  # offsets (scales when there are none: never read)
    strides_w: tuple[int, int, int]  # expert, row, input (in elements of w; for 4-bit, in bytes)
    strides_s: tuple[int, int, int]
    mode: int
    sn: int
    sk: int
    n: int
    k: int
    fp8_native: bool

    def step_k(self, block_k: int, minimum: int) -> int:
        """The K step for a rule's ``block_k``: itself, or when a scale column spans fewer inputs, the largest
        power of two dividing that span (so a step reads one scale column), but at least ``minimum``."""
        if self.mode == MODE_PLAIN or self.sk % block_k == 0:
            return block_k
        return max(minimum, min(block_k, self.sk & -self.sk))

    def constexprs(self, block_k: int) -> dict[str, Any]:
        """The kernel constexprs for a K step of ``block_k`` inputs."""
        return {"QUANT": self.mode, "SN": self.sn, "SK": self.sk, "FP8_NATIVE": self.fp8_native,
                "S_ROW": self.mode != MODE_PLAIN and self.sk % block_k == 0}


@functools.cache
def _fp8_native(device: torch.device) -> bool:
    from triton.runtime.jit import JITFunction

    if not isinstance(fp8_to_f32, JITFunction):  # the interpreter: numpy has no float8
        return False
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def kernel_args(w: torch.Tensor | StackedWeight) -> WeightArgs:
    if isinstance(w, torch.Tensor):
        E, N, K = w.shape
        return WeightArgs(w, w, w, (w.stride(0), w.stride(1), w.stride(2)), (0, 0, 0), MODE_PLAIN, 1, K, N, K,
                          False)
    if "launch" not in w.derived:
        w.derived["launch"] = _stacked_args(w)
    return w.derived["launch"]


def _stacked_args(w: StackedWeight) -> WeightArgs:
    q = w.q
    native = w.mode == MODE_FP8 and _fp8_native(q.device)
    if w.mode == MODE_FP8 and not native:
        q = q.view(torch.uint8)
    s = w.scale
    o = w.offset if w.offset is not None else s
    if w.offset is not None and w.offset.stride() != s.stride():
        raise ValueError("expert offsets and scales must share a layout")
    return WeightArgs(q, s, o, (q.stride(0), q.stride(1), q.stride(2)), (s.stride(0), s.stride(1), s.stride(2)),
                      w.mode, w.sn, w.sk, w.n, w.k, native)


@triton.jit
def dequant(q, s_ptrs, o_ptrs, mask, QUANT: tl.constexpr, FP8_NATIVE: tl.constexpr):
    """Codes ``q`` -> float32 weights: FP8 (``QUANT`` 1) times its scales, or (3) ``code * scale + offset``;
    ``s_ptrs``/``o_ptrs`` and ``mask`` broadcast against ``q``."""
    s = tl.load(s_ptrs, mask=mask, other=0.0).to(tl.float32)
    if QUANT == 1:
        return fp8_to_f32(q, FP8_NATIVE) * s
    else:  # (an else, not a fall-through: Triton compiles the code after a constexpr-if's return too)
        o = tl.load(o_ptrs, mask=mask, other=0.0).to(tl.float32)
        return q.to(tl.float32) * s + o


@triton.jit
def dequant_nibbles(byte, s_ptrs, o_ptrs, mask):
    """Packed 4-bit codes -> (float32 weights of the low nibbles, of the high nibbles), one scale and offset."""
    s = tl.load(s_ptrs, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(o_ptrs, mask=mask, other=0.0).to(tl.float32)
    return (byte & 15).to(tl.float32) * s + o, (byte >> 4).to(tl.float32) * s + o
