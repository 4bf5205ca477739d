"""The fused MoE Triton paths (routing, align-by-expert, grouped GEMMs; the small-batch GEMVs) against a
loop over experts.

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
    fused = tm.fused_experts(x, w13, w2, weights, ids.to(torch.int32))  # the automatic choice
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)
    grouped = tm.fused_experts(x, w13, w2, weights, ids.to(torch.int32), rules=tm.moe_rules(T * K))
    torch.testing.assert_close(grouped, ref, rtol=1e-4, atol=1e-4)


def test_fused_experts_bf16_and_empty():
    T, E, K, H, inter = 4, 4, 2, 32, 16
    x = torch.randn(T, H, device=DEV).bfloat16()
    w13, w2 = _weights(E, H, inter, 1)
    weights, ids = select_experts(torch.randn(T, E, device=DEV), RoutingConfig(E, K, False, False))
    ref = loop_reference(x, w13.bfloat16(), w2.bfloat16(), weights, ids).float()
    for rules in (None, tm.moe_rules(T * K)):  # the automatic choice, then the grouped path
        out = tm.fused_experts(x, w13.bfloat16(), w2.bfloat16(), weights, ids.to(torch.int32), rules=rules)
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

    assert_fused_equals_unfused(build_tiny_model(tmp_path / "qwen2moe", "qwen2moe"), max_tokens=6)


def assert_fused_equals_unfused(folder, max_tokens: int) -> None:
    """The model at ``folder`` (fp32, CPU) gives the same greedy tokens before and after enable_fused_kernels()."""
    from pagoda import LLM, SamplingParams

    prompts = ["The quick brown fox", "héllo"]
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    llm = LLM(str(folder), dtype="float32", device="cpu", num_gpu_blocks_override=32)
    base = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    llm.llm_engine.core.runner.model.enable_fused_kernels()
    fused = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    assert fused == base


# ---------------------------------------------------------------- the small-batch path (small_moe.py)
from pagoda.layers.fused_moe import small_moe as sm  # noqa: E402

# Block sizes that divide neither H nor I of the cases below (masked tails), one that does (EVEN_K), and
# down tiles of 1, 2 and all choices per step.
SMALL_RULES = {
    "tails": (sm.MoeGemvRule(16, 32), sm.MoeGemvRule(16, 16)),
    "even": (sm.MoeGemvRule(8, 8, num_warps=2), sm.MoeGemvRule(4, 4, block_u=1)),
    "u2": (sm.MoeGemvRule(4, 16), sm.MoeGemvRule(8, 32, block_u=2)),
}


def _routing(T, E, K, seed, norm=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, E, generator=g).to(DEV)
    return select_experts(logits, RoutingConfig(E, K, norm, False))


@pytest.mark.parametrize("T,E,K,H,inter,rule", [
    (1, 5, 1, 40, 24, "tails"), (2, 6, 2, 48, 20, "u2"), (3, 10, 8, 32, 24, "tails"), (4, 7, 2, 40, 36, "even"),
    (5, 12, 8, 24, 16, "u2"), (1, 10, 8, 40, 24, "even"), (3, 5, 3, 40, 12, "u2"),
])
def test_small_path_matches_loop_fp32(T, E, K, H, inter, rule):
    torch.manual_seed(T * 100 + E)
    x = torch.randn(T, H, device=DEV)
    w13, w2 = _weights(E, H, inter, T + E)
    weights, ids = _routing(T, E, K, T)
    ref = loop_reference(x, w13, w2, weights, ids).float()
    out = sm.small_fused_experts(x, w13, w2, weights, ids.to(torch.int32), SMALL_RULES[rule])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # fused_experts with small_rules takes the same path
    same = tm.fused_experts(x, w13, w2, weights, ids.to(torch.int32), small_rules=SMALL_RULES[rule])
    assert torch.equal(same, out)


@pytest.mark.parametrize("T,K,cast", [(1, 8, True), (3, 2, False), (4, 1, True)])
def test_small_path_bf16_matches_loop_and_grouped(T, K, cast):
    """bf16 (routing weights bf16 as Qwen's, or float32 as Mixtral's): within bf16 tolerance of the float64
    loop and of the grouped path (which rounds each pair's down output before the top-k sum)."""
    E, H, inter = 9, 40, 24
    torch.manual_seed(T)
    x = torch.randn(T, H, device=DEV).bfloat16()
    w13, w2 = (w.bfloat16() for w in _weights(E, H, inter, T))
    weights, ids = _routing(T, E, K, T)
    weights = weights.bfloat16() if cast else weights
    ids32 = ids.to(torch.int32)
    ref = loop_reference(x, w13, w2, weights, ids).float()
    out = sm.small_fused_experts(x, w13, w2, weights, ids32, SMALL_RULES["tails"])
    grouped = tm.fused_experts(x, w13, w2, weights, ids32, rules=(tm.MoeRule(), tm.MoeRule()))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(out.float(), grouped.float(), rtol=3e-2, atol=3e-2)
    assert sm.small_fused_experts(x[:0], w13, w2, weights[:0], ids32[:0], SMALL_RULES["tails"]).shape == (0, H)


def test_small_path_clamps_expert_ids():
    """An id past the last expert (fused_topk's answer for a NaN row) reads the last expert, not past w13/w2."""
    E, K, H, inter = 5, 2, 24, 16
    x = torch.randn(2, H, device=DEV)
    w13, w2 = _weights(E, H, inter, 3)
    weights = torch.full((2, K), 0.5, device=DEV)
    ids = torch.tensor([[E - 1, 0], [1, E - 1]], dtype=torch.int32, device=DEV)
    wild = torch.tensor([[E + 123, 0], [1, E]], dtype=torch.int32, device=DEV)
    rules = SMALL_RULES["tails"]
    assert torch.equal(sm.small_fused_experts(x, w13, w2, weights, wild, rules),
                       sm.small_fused_experts(x, w13, w2, weights, ids, rules))


def test_small_path_selection(monkeypatch):
    """By pair count: the table's launches up to its largest key (the smallest key at or above the count),
    None (the grouped path) above it, above the expert count, or when switched off; fused_experts runs the
    path so chosen."""
    table = {4: SMALL_RULES["even"], 16: SMALL_RULES["tails"]}
    monkeypatch.setattr(sm, "SMALL_MOE_TABLE", table)
    assert sm.small_moe_rules(1, 128) == sm.small_moe_rules(4, 128) == SMALL_RULES["even"]
    assert sm.small_moe_rules(5, 128) == sm.small_moe_rules(16, 128) == SMALL_RULES["tails"]
    assert sm.small_moe_rules(17, 128) is None and sm.small_moe_rules(0, 128) is None
    assert sm.small_moe_rules(8, 8) == SMALL_RULES["tails"] and sm.small_moe_rules(9, 8) is None
    assert sm.small_moe_rules(9, 16, {8: SMALL_RULES["u2"]}) is None
    assert sm.small_moe_rules(8, 16, {8: SMALL_RULES["u2"]}) == SMALL_RULES["u2"]
    calls = []
    monkeypatch.setattr(tm, "small_fused_experts", lambda *a: calls.append("small") or a[0] * 0)
    align = tm.moe_align_block_size
    monkeypatch.setattr(tm, "moe_align_block_size", lambda *a: calls.append("grouped") or align(*a))
    E, K, H, inter = 20, 2, 16, 8
    w13, w2 = _weights(E, H, inter, 0)
    for T, path in ((1, "small"), (8, "small"), (9, "grouped")):
        weights, ids = _routing(T, E, K, T)
        tm.fused_experts(torch.randn(T, H, device=DEV), w13, w2, weights, ids.to(torch.int32))
        assert calls.pop() == path, T
    weights, ids = _routing(2, E, K, 0)  # explicit grouped rules force the grouped path
    tm.fused_experts(torch.randn(2, H, device=DEV), w13, w2, weights, ids.to(torch.int32),
                     rules=(tm.MoeRule(), tm.MoeRule()))
    assert calls.pop() == "grouped"
    monkeypatch.setattr(sm, "SMALL_MOE_ENABLED", False)
    assert sm.small_moe_rules(1, 128) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the --smoke mode runs the kernels in the CPU interpreter")
def test_small_sweep_smoke(monkeypatch, capsys):
    """benchmarks/gpu/moe_small_sweep.py --smoke runs (interpreter, tiny shapes) and prints a table to paste."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_bench_smoke import run_smoke

    run_smoke(monkeypatch, "benchmarks/gpu/moe_small_sweep.py")
    out = capsys.readouterr().out
    assert "[qwen3-30b-a3b] T= 1 (  4 pairs" in out and "[mixtral-8x7b] T= 1: the table runs" in out
    assert "SMALL_MOE_TABLE: dict[int, tuple[MoeGemvRule, MoeGemvRule]] = {" in out
