"""The fused MoE Triton path (routing, align-by-expert, grouped GEMMs) against a loop over experts.

On the CPU the kernels run in Triton's interpreter at tiny sizes; the grouped PyTorch path
(the CPU's) is checked against the same reference.
"""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from pagoda.layers.fused_moe import RoutingConfig, select_experts  # noqa: E402
from pagoda.layers.fused_moe import triton_moe as tm  # noqa: E402
from pagoda.layers.fused_moe.grouped import grouped_experts  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def loop_reference(x, w13, w2, weights, ids):
    """Token by token, choice by choice: sum_k w * down(silu(gate x) * up x), in float64."""
    inter = w2.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            gu = w13[e].double() @ x[t].double()
            h = F.silu(gu[:inter]) * gu[inter:]
            out[t] += float(weights[t, k]) * (w2[e].double() @ h)
    return out


def _weights(E, H, inter, seed):
    g = torch.Generator().manual_seed(seed)
    w13 = (torch.randn(E, 2 * inter, H, generator=g) * 0.2).to(DEV)
    w2 = (torch.randn(E, H, inter, generator=g) * 0.2).to(DEV)
    return w13, w2


@pytest.mark.parametrize("T,E,K,norm", [(1, 8, 2, True), (5, 6, 3, False), (37, 16, 4, True), (3, 5, 1, False)])
def test_fused_topk_matches_select_experts(T, E, K, norm):
    torch.manual_seed(T)
    logits = torch.randn(T, E, device=DEV)
    for cast in (False, True):
        rc = RoutingConfig(E, K, norm, cast)
        w_ref, i_ref = select_experts(logits, rc)
        w, i = tm.fused_topk(logits, rc)
        assert torch.equal(i.long(), i_ref)
        torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("T,E,K,bm", [(1, 8, 2, 16), (9, 4, 2, 16), (40, 7, 3, 16), (20, 3, 2, 32)])
def test_align_block_size(T, E, K, bm):
    torch.manual_seed(T * E)
    ids = torch.stack([torch.randperm(E)[:K] for _ in range(T)]).to(torch.int32).to(DEV)
    sorted_ids, expert_ids, npost = tm.moe_align_block_size(ids, E, bm)
    M = T * K
    counts = torch.bincount(ids.flatten().long().cpu(), minlength=E)
    padded = (counts + bm - 1) // bm * bm
    assert int(npost) == int(padded.sum())
    assert sorted_ids.numel() == tm.grid_blocks(M, E, bm) * bm >= int(npost)
    s, ex = sorted_ids.cpu(), expert_ids.cpu()
    flat = ids.flatten().cpu()
    start = 0
    for e in range(E):
        run = s[start : start + int(padded[e])]
        real = run[run < M]
        assert sorted(real.tolist()) == sorted(torch.nonzero(flat == e).flatten().tolist())
        assert (run[int(counts[e]):] == M).all()  # padding after the expert's pairs
        for b in range(start // bm, (start + int(padded[e])) // bm):
            assert int(ex[b]) == e
        start += int(padded[e])
    assert (s[start:] == M).all()


@pytest.mark.parametrize("T,E,K,H,inter", [(1, 4, 2, 32, 16), (6, 8, 2, 48, 40), (23, 5, 3, 32, 24)])
def test_fused_and_grouped_experts_match_loop(T, E, K, H, inter):
    torch.manual_seed(T)
    x = torch.randn(T, H, device=DEV)
    w13, w2 = _weights(E, H, inter, T)
    weights, ids = select_experts(torch.randn(T, E, device=DEV), RoutingConfig(E, K, True, False))
    ref = loop_reference(x, w13, w2, weights, ids).float()
    torch.testing.assert_close(grouped_experts(x, w13, w2, weights, ids), ref, rtol=1e-4, atol=1e-4)
    fused = tm.fused_experts(x, w13, w2, weights, ids.to(torch.int32))
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)


def test_fused_experts_bf16_and_empty():
    T, E, K, H, inter = 4, 4, 2, 32, 16
    x = torch.randn(T, H, device=DEV).bfloat16()
    w13, w2 = _weights(E, H, inter, 1)
    weights, ids = select_experts(torch.randn(T, E, device=DEV), RoutingConfig(E, K, False, False))
    ref = loop_reference(x, w13.bfloat16(), w2.bfloat16(), weights, ids).float()
    out = tm.fused_experts(x, w13.bfloat16(), w2.bfloat16(), weights, ids.to(torch.int32))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    empty = tm.fused_experts(x[:0], w13, w2, weights[:0], ids[:0].to(torch.int32))
    assert empty.shape == (0, H)


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="CPU interpreter check; on CUDA the engine runs fused by default and tests/gpu covers it")
def test_tiny_qwen2moe_fused_equals_unfused(tmp_path):
    """The whole model (shared expert included) with the Triton MoE path gives the grouped path's tokens."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build_tiny_model

    from pagoda import LLM, SamplingParams

    folder = build_tiny_model(tmp_path / "qwen2moe", "qwen2moe")
    prompts = ["The quick brown fox", "héllo"]
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    llm = LLM(str(folder), dtype="float32", device="cpu", num_gpu_blocks_override=32)
    base = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    llm.llm_engine.core.runner.model.enable_fused_kernels()
    fused = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    assert fused == base
