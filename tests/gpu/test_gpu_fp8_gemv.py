"""GPU weight-only FP8 GEMV (skipped without CUDA): Llama-3-8B linear shapes against dequantize-then-matmul,
the ``fp8_linear`` small-M dispatch, split-K under a CUDA graph (bitwise reproducible), block-wise scales, and an
FP8 engine whose decode steps run the GEMV (CUDA graphs) against the same engine on the W8A8 path (top-5 rule)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pagoda.layers.arrival_counters import arrival_counters
from pagoda.quantization.kernels import triton_fp8_gemv as gemv
from pagoda.quantization.kernels.triton_fp8_gemv import GemvConfig, fp8_gemv
from pagoda.quantization.w8a8 import FP8_DTYPE, fp8_linear, quantize_weight_fp8_per_channel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}


def _operands(k: int, n: int, m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g) / k**0.5
    q, s = quantize_weight_fp8_per_channel(w)
    return torch.randn(m, k, device="cuda", generator=g).bfloat16(), q, s


def _reference(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return x.double() @ (q.double() * s.double()[:, None]).T


def _close(y: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(y.double(), ref, rtol=2**-7, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_gemv_real_shapes(shape: str, m: int) -> None:
    k, n = SHAPES[shape]
    x, q, s = _operands(k, n, m)
    ref = _reference(x, q, s)
    _close(fp8_gemv(x, q, s), ref)  # the default rule / table
    for cfg in (GemvConfig(block_n=16, block_k=512), GemvConfig(block_n=32, block_k=256, use_dot=True, split_k=3)):
        _close(fp8_gemv(x, q, s, config=cfg), ref)


@pytest.mark.parametrize("cfg", [GemvConfig(block_n=16, block_k=512), GemvConfig(block_n=32, block_k=256,
                                                                                  use_dot=True)])
def test_bits_decode_bitwise_equals_native(cfg: GemvConfig) -> None:
    x, q, s = _operands(4096, 4096, 2)
    assert torch.equal(fp8_gemv(x, q, s, config=cfg, decode="bits"), fp8_gemv(x, q, s, config=cfg, decode="native"))


def test_fp8_linear_dispatch() -> None:
    """Up to GEMV_MAX_M rows: exactly the GEMV (bias included); one more row: the W8A8 ``_scaled_mm`` path."""
    x, q, s = _operands(4096, 6144, gemv.GEMV_MAX_M + 1)
    bias = torch.randn(6144, device="cuda").bfloat16()
    small = x[: gemv.GEMV_MAX_M]
    y = fp8_linear(small, q, s, bias, None, True, use_scaled_mm=True)
    assert torch.equal(y, fp8_gemv(small, q, s, bias))
    ref = _reference(small, q, s) + bias.double()
    w8a8 = fp8_linear(small, q, s, bias, None, True, use_scaled_mm=True, allow_gemv=False)
    assert (y.double() - ref).abs().mean() < (w8a8.double() - ref).abs().mean()  # no activation rounding
    big = fp8_linear(x, q, s, bias, None, True, use_scaled_mm=True)
    assert torch.equal(big, fp8_linear(x, q, s, bias, None, True, use_scaled_mm=True, allow_gemv=False))


def test_split_k_graph_replay_is_bitwise_reproducible() -> None:
    x, q, s = _operands(14336, 4096, 4)
    cfg = GemvConfig(block_n=64, block_k=256, split_k=8, use_dot=True)
    eager = fp8_gemv(x, q, s, config=cfg)
    for _ in range(20):
        assert torch.equal(fp8_gemv(x, q, s, config=cfg), eager)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fp8_gemv(x, q, s, config=cfg)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fp8_gemv(x, q, s, config=cfg)
    for _ in range(5):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
    assert int(arrival_counters(x.device).abs().sum()) == 0


@pytest.mark.parametrize("m", [1, 4])
def test_block_scales_real_shape(m: int) -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    n, k, block = 4096, 7168, (128, 128)
    q = (torch.randn(n, k, device="cuda", generator=g) * 64).clamp(-448, 448).to(FP8_DTYPE)
    s = torch.rand(n // 128, k // 128, device="cuda", generator=g) * 1e-3
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    scale = s.double().repeat_interleave(128, 0).repeat_interleave(128, 1)
    _close(fp8_gemv(x, q, s, block=block), x.double() @ (q.double() * scale).T)


def test_engine_decode_gemv_follows_w8a8_by_top5(tmp_path, monkeypatch):
    """Online FP8 tiny model: decode steps of 1 and 6 rows run the GEMV (under CUDA graphs); with the rule off
    (``GEMV_MAX_M = 0``) every step runs W8A8. Greedy tokens agree by the top-5 rule (activation rounding is the
    only difference)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from engine_checks import PROMPTS, compare_top5, greedy, our_top
    from tiny_models import build_tiny_model

    from pagoda import LLM

    folder = build_tiny_model(tmp_path / "llama", "llama")
    batches = (PROMPTS[:1], PROMPTS[:6])

    def run() -> list:
        llm = LLM(str(folder), device="cuda", dtype="bfloat16", quantization="fp8", kv_cache_memory_bytes=2**24)
        assert llm.llm_engine.core.runner.graphs is not None, "CUDA graphs should be on"
        outs = [o for b in batches for o in llm.generate(b, greedy(16, logprobs=5), use_tqdm=False)]
        llm.shutdown()
        return outs

    gemv_outs = run()
    monkeypatch.setattr(gemv, "GEMV_MAX_M", 0)
    w8a8_outs = run()
    compared = 0
    for a, b in zip(gemv_outs, w8a8_outs, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        compared += compare_top5(ca.token_ids, cb.token_ids, [our_top(d) for d in ca.logprobs],
                                 [our_top(d) for d in cb.logprobs], what="gemv vs w8a8")
    assert compared >= 7 * 4
