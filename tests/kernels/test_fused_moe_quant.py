"""Quantized experts in the fused MoE paths (FP8 per row / per block, 4- and 8-bit integer codes with groups)
against a float64 loop over the dequantized experts.

The same :class:`~pagoda.layers.fused_moe.quantized.StackedWeight` runs through the grouped GEMMs, the
small-batch GEMVs (Triton; the interpreter on the CPU, FP8 by the bit-pattern decode there) and the grouped
PyTorch path (which dequantizes each selected expert). Shapes include a group and a block that do not divide the
kernels' K step (the per-element scale gather) and sizes that are not multiples of the tiles.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from test_fused_moe import assert_fused_equals_unfused, loop_reference  # noqa: E402

from pagoda.layers.fused_moe import RoutingConfig, select_experts  # noqa: E402
from pagoda.layers.fused_moe import small_moe as sm  # noqa: E402
from pagoda.layers.fused_moe import triton_moe as tm  # noqa: E402
from pagoda.layers.fused_moe.grouped import grouped_experts  # noqa: E402
from pagoda.layers.fused_moe.quantized import MODE_FP8, MODE_INT4, MODE_INT8, StackedWeight  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _stacked(mode, E, n, k, sn, sk, seed, dtype=torch.float32):
    """Random codes and scales of one stacked form (scales giving weights of about ±0.2)."""
    g = torch.Generator().manual_seed(seed)
    srows, scols = -(-n // sn), -(-k // sk)
    if mode == MODE_FP8:
        q = (torch.rand(E, n, k, generator=g) * 2 - 1).mul(448).to(torch.float8_e4m3fn)
        scale = (torch.rand(E, srows, scols, generator=g) + 0.5) * (0.2 / 448)
        return StackedWeight(mode, q.to(DEV), scale.to(DEV), None, n, k, sn, sk, dtype)
    bits = 4 if mode == MODE_INT4 else 8
    codes = torch.randint(0, 2**bits, (E, n, k), generator=g, dtype=torch.uint8)
    q = (codes[..., 0::2] | (codes[..., 1::2] << 4)) if mode == MODE_INT4 else codes
    scale = ((torch.rand(E, srows, scols, generator=g) + 0.5) * (0.2 / 2 ** (bits - 1))).to(dtype)
    zero = torch.randint(0, 2**bits, (E, srows, scols), generator=g).to(dtype)
    return StackedWeight(mode, q.to(DEV), scale.to(DEV), (-zero * scale).to(DEV), n, k, sn, sk, dtype)


def _dense(w):
    return torch.stack([w.expert(e, torch.float32) for e in range(w.shape[0])])


# (mode, w13 (sn, sk), w2 (sn, sk)) with H = 64, inter = 48: per-row FP8 (sk = the whole input), 16x16 blocks,
# 4-bit groups of 16 (down: 16 | 48) and of 32 on gate/up, 8-bit per-row codes and groups of 24 (not a power of two)
FORMS = {
    "fp8-row": (MODE_FP8, (1, 64), (1, 48)),
    "fp8-block": (MODE_FP8, (16, 16), (16, 16)),
    "int4-g32-g16": (MODE_INT4, (1, 32), (1, 16)),
    "int4-row": (MODE_INT4, (1, 64), (1, 48)),
    "int8-g16-g24": (MODE_INT8, (1, 16), (1, 24)),
}


@pytest.mark.parametrize("form,T", [(f, 2) for f in FORMS] + [("fp8-block", 9), ("int4-g32-g16", 9)])
def test_quantized_experts_match_loop(form, T):
    """T = 2: a block of one or two pairs per expert; T = 9: several pairs share an expert's block."""
    E, K, H, inter = 6, 2, 64, 48
    mode, (sn13, sk13), (sn2, sk2) = FORMS[form]
    w13 = _stacked(mode, E, 2 * inter, H, sn13, sk13, 1)
    w2 = _stacked(mode, E, H, inter, sn2, sk2, 2)
    torch.manual_seed(T)
    x = torch.randn(T, H, device=DEV)
    weights, ids = select_experts(torch.randn(T, E, device=DEV), RoutingConfig(E, K, True, False))
    ref = loop_reference(x, _dense(w13), _dense(w2), weights, ids).float()
    ids32 = ids.to(torch.int32)
    torch.testing.assert_close(grouped_experts(x, w13, w2, weights, ids), ref, rtol=1e-4, atol=1e-4)
    grouped = tm.fused_experts(x, w13, w2, weights, ids32, rules=tm.moe_rules(T * K))
    torch.testing.assert_close(grouped, ref, rtol=1e-4, atol=1e-4)
    small = sm.small_fused_experts(x, w13, w2, weights, ids32, (sm.MoeGemvRule(16, 32), sm.MoeGemvRule(8, 32)))
    torch.testing.assert_close(small, ref, rtol=1e-4, atol=1e-4)


def test_quantized_experts_bf16():
    """bf16 activations: the grouped GEMM rounds each dequantized tile to bf16 for the tensor-core dot."""
    E, K, T, H, inter = 4, 2, 5, 64, 32
    w13 = _stacked(MODE_INT4, E, 2 * inter, H, 1, 32, 3, torch.bfloat16)
    w2 = _stacked(MODE_INT4, E, H, inter, 1, 32, 4, torch.bfloat16)
    x = torch.randn(T, H, device=DEV).bfloat16()
    weights, ids = select_experts(torch.randn(T, E, device=DEV), RoutingConfig(E, K, True, False))
    ref = loop_reference(x, _dense(w13), _dense(w2), weights, ids).float()
    for rules in (None, tm.moe_rules(T * K)):
        out = tm.fused_experts(x, w13, w2, weights, ids.to(torch.int32), rules=rules)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="CPU interpreter check; tests/gpu/test_gpu_moe.py runs the same checkpoints compiled")
def test_quantized_checkpoint_fused_equals_unfused(tmp_path):
    """A whole quantized MoE model (block-wise FP8, shared expert too) with the Triton MoE path gives the grouped
    path's tokens (the 4-bit checkpoints run compiled in tests/gpu/test_gpu_moe.py)."""
    arch, scheme = "qwen2moe", "fp8-block16"
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from moe_quant_checkpoints import write_quantized
    from tiny_models import build_tiny_model

    qdir, _ = write_quantized(build_tiny_model(tmp_path / arch, arch), tmp_path / "q", scheme)
    assert_fused_equals_unfused(qdir, max_tokens=5)
