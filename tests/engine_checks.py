"""Shared test helpers: prompts, the HF reference, the top-5 rule, logprob comparisons, leak checks.

The reference is Hugging Face transformers on the same weights (GUIDE section 4). Greedy
tokens must be equal; where they diverge, the diverging token must be in the other side's
top-5 at that position, and the comparison of that sequence stops there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pagoda.sampling_params import SamplingParams

ARCHS = ["llama", "llama31", "mistral", "qwen2", "qwen3"]

# Different lengths (1 to ~275 tokens with the tiny tokenizer), ASCII and multi-byte text; the
# longest ones cross many KV blocks and, for llama31, the rope-scaling original context (64).
PROMPTS = [
    "a",
    "Hi",
    "Paris is the capital of",
    "The quick brown fox",
    "🙂 emoji テキスト",
    "héllo wörld — ünïcode 日本語",
    "Large language models generate text one token at a time, and",
    "PagedAttention stores the key value cache in fixed size blocks so that memory is not wasted. "
    "Continuous batching lets",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 6),
    " ".join(["Continuous batching lets new requests join a running batch."] * 12),
]

NEW_TOKENS = 32


def greedy(max_tokens: int = NEW_TOKENS, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


@dataclass
class HFRef:
    prompt_ids: list[int]
    tokens: list[int]  # HF greedy continuation
    step_logprobs: torch.Tensor  # [T, V] fp32 log_softmax of HF's raw logits at each generated position
    prompt_logprobs: torch.Tensor  # [P, V] fp32 log_softmax at prompt positions (row i predicts token i+1)


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int = NEW_TOKENS) -> HFRef:
    """HF ``generate`` (greedy, EOS disabled) plus HF's log-probabilities over the prompt."""
    from transformers import GenerationConfig

    ids = torch.tensor([prompt_ids])
    gc = GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False, eos_token_id=None, pad_token_id=0,
        output_logits=True, return_dict_in_generate=True,
    )
    # transformers 5 fills a None eos_token_id from the model's own generation_config: clear that too.
    saved_eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None
    try:
        with torch.no_grad():
            out = model.generate(ids, generation_config=gc)
            prompt_logits = model(ids).logits[0]
    finally:
        model.generation_config.eos_token_id = saved_eos
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    assert len(tokens) == max_new_tokens, "HF stopped early: EOS was not disabled"
    step = torch.log_softmax(torch.stack([lg[0] for lg in out.logits]).float(), dim=-1)
    return HFRef(list(prompt_ids), tokens, step, torch.log_softmax(prompt_logits.float(), dim=-1))


def top_ids(lp_row: torch.Tensor, k: int = 5) -> set[int]:
    return set(lp_row.topk(k).indices.tolist())


def compare_top5(
    ours: list[int],
    ref: list[int],
    our_top5: list[set[int]] | None,
    ref_top5: list[set[int]],
    ref_lps: torch.Tensor | None = None,
    max_gap: float | None = None,
    what: str = "",
) -> int:
    """The guide's top-5 rule. Returns how many leading tokens are equal (the compared prefix).

    Where the sequences first differ, our token must be in the reference's top-5 and (when
    ``our_top5`` is given) the reference's token in ours; comparison stops there. With
    ``max_gap`` (fp32 runs), the divergence must also be a near-tie in the reference:
    ``ref_lp[ref_tok] - ref_lp[our_tok] <= max_gap``.
    """
    n = min(len(ours), len(ref))
    for i in range(n):
        a, b = ours[i], ref[i]
        if a == b:
            continue
        assert a in ref_top5[i], f"{what}: token {i}: ours {a} not in reference top-5 {sorted(ref_top5[i])} (ref {b})"
        if our_top5 is not None:
            assert b in our_top5[i], (
                f"{what}: token {i}: reference {b} not in our top-5 {sorted(our_top5[i])} (ours {a})")
        if max_gap is not None:
            assert ref_lps is not None
            gap = float(ref_lps[i, b] - ref_lps[i, a])
            assert gap <= max_gap, f"{what}: token {i}: divergence {a} vs {b} is not a near-tie (gap {gap:.2e})"
        return i
    assert len(ours) == len(ref), f"{what}: lengths differ: {len(ours)} vs {len(ref)}"
    return n


def assert_logprob_dict_close(d: dict, ref_row: torch.Tensor, k: int, chosen: int, atol: float, what: str) -> None:
    """One position's ``{token_id: Logprob}`` against the reference log-softmax row.

    Every reported value must be close to the reference; the entries ranked 1..k must be the
    reference's top-k (checked through values, so exact ties cannot make it flaky); the chosen
    token must be present with a rank consistent with the reference.
    """
    assert chosen in d, f"{what}: chosen token {chosen} missing from {sorted(d)}"
    for tid, lp in d.items():
        ref = float(ref_row[tid])
        assert math.isclose(lp.logprob, ref, abs_tol=atol), f"{what}: token {tid}: {lp.logprob} vs HF {ref}"
    ranked = sorted((lp.rank, tid) for tid, lp in d.items() if lp.rank is not None and lp.rank <= k)
    assert [r for r, _ in ranked] == list(range(1, k + 1)), f"{what}: ranks {ranked} are not 1..{k}"
    ref_sorted = ref_row.sort(descending=True).values
    for r, tid in ranked:
        assert math.isclose(float(ref_sorted[r - 1]), float(ref_row[tid]), abs_tol=atol), (
            f"{what}: token {tid} reported at rank {r} but HF's rank-{r} value is {float(ref_sorted[r - 1])}"
        )
    c = float(ref_row[chosen])
    lo = int((ref_row > c + atol).sum()) + 1
    hi = int((ref_row > c - atol).sum()) + 1
    assert lo <= d[chosen].rank <= hi, f"{what}: chosen rank {d[chosen].rank} not in HF's [{lo}, {hi}]"


def our_top(d: dict, k: int = 5) -> set[int]:
    return {tid for tid, lp in d.items() if lp.rank is not None and lp.rank <= k}


def assert_engine_clean(llm) -> None:
    """After a run: the engine is idle, its invariants hold and it holds no KV blocks."""
    eng = llm.llm_engine
    core = eng.core
    core.check_integrity()
    assert not core.has_unfinished_requests()
    assert not eng.has_unfinished_requests()
    assert core.kv.pool.num_used_blocks == 0
    assert core.kv.pool.num_free_blocks == core.kv.num_blocks - 1
    assert not core.kv.req_blocks


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


def assert_outputs_close(one, two, atol: float, prompt_keys: str = "ref") -> None:
    """Two runs of the same prompts (e.g. one rank vs several): equal tokens, sampled-token logprobs with equal
    key sets and values within ``atol``, prompt logprobs within ``atol`` over ``prompt_keys``: ``"ref"`` every
    key of ``one`` (``two`` must have it), ``"same"`` equal key sets, ``"common"`` the keys both have."""
    assert token_ids(two) == token_ids(one)
    for a, b in zip(one, two, strict=True):
        for da, db in zip(a.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
            assert set(da) == set(db)
            assert all(math.isclose(da[t].logprob, db[t].logprob, abs_tol=atol) for t in da)
        for pa, pb in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:], strict=True):
            if prompt_keys == "same":
                assert set(pa) == set(pb)
            keys = pa.keys() & pb.keys() if prompt_keys == "common" else pa.keys()
            assert all(math.isclose(pa[t].logprob, pb[t].logprob, abs_tol=atol) for t in keys)


def assert_follows_hf_top5(tiny, arch: str, outputs, max_new_tokens: int) -> None:
    """Each output's greedy tokens follow HF on the same tiny model by the top-5 rule (GUIDE §4)."""
    for b in outputs:
        ref = tiny.hf_ref(arch, b.prompt_token_ids, max_new_tokens=max_new_tokens)
        comp = b.outputs[0]
        compare_top5(comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
                     [top_ids(r) for r in ref.step_logprobs], ref.step_logprobs, 1e-3, what=b.prompt[:20])


def assert_start_up_error(model_path, kw: dict, match: str) -> None:
    """``EngineArgs(model, device="cpu", **kw).create_config()`` refuses with a ValueError matching ``match``
    (at configuration: no engine is built, no weight is loaded)."""
    import pytest

    from pagoda.config import EngineArgs

    with pytest.raises(ValueError, match=match):
        EngineArgs(model=str(model_path), device="cpu", **kw).create_config()
