"""4-bit codes -> bf16/fp16 weights two at a time (CUDA only; inline PTX, so never under ``TRITON_INTERPRET``).

The ``dot`` kernels of :mod:`triton_wna16` feed tensor cores a weight tile in the activation dtype. Decoding it in
fp32 costs per weight a LOP3 + FFMA (the exact nibble of :func:`triton_w4_gemv._nibble`), an FFMA ``q * s + o`` and
half a pack to 16 bits: ~3.5 issue slots, which bound the kernel where the weights go to ``mma.sync`` from registers
(16-row tiles: -27 % per linear on an H100, RESULTS.md session 31; at 64+ rows wgmma's shared-memory operand path
bounds it instead, -3 %). Here two weights of adjacent columns share one 32-bit register through the whole chain:

* ``prmt``: byte ``b`` of each column's word into the two halves of one register (nibble ``2b`` in the low 4 bits of
  each half; odd nibbles come from the word shifted right by 4 once per word; the selector is a constant operand
  that ptxas folds into the instruction);
* ``lop3``: ``(t & 0x000F000F) | MAGIC2``: each half is the 16-bit float ``MAGIC + q`` (bf16 ``0x4300`` = 128 with a
  7-bit mantissa, fp16 ``0x6400`` = 1024 with 10 bits: ``q < 16`` sits in the mantissa, exactly);
* ``fma.rn.{bf16x2,f16x2}(t, 1, -MAGIC)``: ``q`` exactly (both integers are representable);
* ``fma.rn.{bf16x2,f16x2}(q, s, o)``: the weight, ``q * s + o`` rounded once (correctly rounded; the fp32 path rounds
  ``q * s + o`` to fp32 first, so in rare halfway cases the two differ by one 16-bit ulp).

4 instructions per 2 weights plus 2 shifts per 16: ~2.1 per weight. ``s`` and ``o`` are the group's scales/offsets
in the activation dtype (the layout stores them so). ``pack=2`` hands the asm two elements of a thread's registers
(adjacent columns for the N-fastest tiles the callers load); each output half is its own element's weight, so the
result is elementwise whichever elements Triton pairs.
"""

from __future__ import annotations

import triton
import triton.language as tl


def _asm(f16: bool) -> str:
    """PTX for one pair: ``$0`` the two weights, ``$1``/``$2`` the two columns' words, ``$3``/``$4`` their scales /
    offsets (two 16-bit floats per register, column 0 low), ``$5`` the ``prmt`` selector of the byte (``$6``, the
    second element's copy of it, unused)."""
    magic = "0x64006400" if f16 else "0x43004300"
    one, neg = ("0x3C003C00", "0xE400E400") if f16 else ("0x3F803F80", "0xC300C300")
    ty = "f16x2" if f16 else "bf16x2"
    return ("{ .reg .b32 t, c1, cm;\n"
            "prmt.b32 t, $1, $2, $5;\n"
            f"lop3.b32 t, t, 0x000F000F, {magic}, 0xEA;\n"
            f"mov.b32 c1, {one};\nmov.b32 cm, {neg};\n"
            f"fma.rn.{ty} t, t, c1, cm;\n"
            f"fma.rn.{ty} $0, t, $3, $4; }}")


SEL0: tl.constexpr = tl.constexpr(0x0400)
SEL_STEP: tl.constexpr = tl.constexpr(0x0101)
"""``prmt``'s selector for byte ``b`` is ``SEL0 + SEL_STEP * b``: result byte 0 = first word's byte ``b`` (source
index ``b``), byte 2 = second word's byte ``b`` (index ``4 + b``); bytes 1 and 3 (index 0) are masked off."""
_BF16: tl.constexpr = tl.constexpr(_asm(False))
_F16: tl.constexpr = tl.constexpr(_asm(True))


@triton.jit
def pair_decode(p, p4, s, o, j: tl.constexpr):
    """Nibble ``j`` of the int32 words ``p`` (``p4 = p >> 4``) times ``s`` plus ``o`` in ``s``'s dtype (bf16 or
    fp16; ``s``, ``o`` broadcast to ``p``'s shape)."""
    w = p if j % 2 == 0 else p4
    B: tl.constexpr = j // 2
    sel = tl.full(p.shape, SEL0 + SEL_STEP * B, tl.int32)
    asm: tl.constexpr = _F16 if s.dtype == tl.float16 else _BF16
    return tl.inline_asm_elementwise(asm, "=r,r,r,r,r,r,r", [w, s, o, sel], dtype=s.dtype, is_pure=True, pack=2)
