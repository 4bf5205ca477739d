"""Parity with Hugging Face transformers on the same weights (GUIDE section 4).

For each architecture: all PROMPTS (1 to ~275 tokens) in one batch, greedy, 32 new tokens,
EOS ignored. fp32: tokens equal HF ``generate`` (a divergence is allowed only under the top-5
rule *and* as a near-tie of HF's own distribution), prompt logprobs and sample logprobs within
1e-4 of HF's log-softmax. bf16: the top-5 rule in both directions.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from engine_checks import (
    ARCHS,
    NEW_TOKENS,
    PROMPTS,
    assert_engine_clean,
    assert_logprob_dict_close,
    compare_top5,
    greedy,
    our_top,
    top_ids,
)

ATOL = 1e-4  # fp32 logprob tolerance
NEAR_TIE = 1e-3  # an fp32 argmax may flip only where HF's top two are this close
K = 5

_runs: dict[str, list] = {}


def _fp32_run(tiny, arch: str):
    """One batch of every prompt with logprobs=5 and prompt_logprobs=5 (cached per arch)."""
    if arch not in _runs:
        llm = tiny.llm(arch)
        _runs[arch] = llm.generate(PROMPTS, greedy(logprobs=K, prompt_logprobs=K), use_tqdm=False)
        assert_engine_clean(llm)
    return _runs[arch]


@pytest.mark.parametrize("arch", ARCHS + ["llama-tied"])
def test_greedy_tokens_match_hf(tiny, arch):
    from transformers import AutoTokenizer

    outs = _fp32_run(tiny, arch)
    hf_tok = AutoTokenizer.from_pretrained(tiny.path(arch))
    assert len(outs) == len(PROMPTS)
    full = 0
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.prompt == prompt and out.finished
        assert out.prompt_token_ids == hf_tok(prompt).input_ids
        comp = out.outputs[0]
        assert len(comp.token_ids) == NEW_TOKENS
        assert comp.finish_reason == "length" and comp.stop_reason is None
        ref = tiny.hf_ref(arch, out.prompt_token_ids)
        n = compare_top5(
            comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
            [top_ids(r) for r in ref.step_logprobs], ref.step_logprobs, NEAR_TIE, what=f"{arch} {prompt[:20]!r}",
        )
        full += n == NEW_TOKENS
        # The text is the decode of the tokens, except that (as in vLLM) a tail that is an
        # incomplete UTF-8 sequence at the end is held back rather than emitted as U+FFFD.
        full_text = hf_tok.decode(comp.token_ids, skip_special_tokens=True)
        assert full_text.startswith(comp.text)
        assert set(full_text[len(comp.text):]) <= {"\ufffd"}
    # fp32 on the same weights: at most a rare exact near-tie may cut a sequence short.
    assert full >= len(PROMPTS) - 1, f"only {full}/{len(PROMPTS)} sequences equal HF's"


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_logprobs_match_hf(tiny, arch):
    outs = _fp32_run(tiny, arch)
    for _prompt, out in zip(PROMPTS, outs, strict=True):
        ids = out.prompt_token_ids
        plp = out.prompt_logprobs
        assert plp is not None and len(plp) == len(ids)
        assert plp[0] is None  # the first token has no context
        ref = tiny.hf_ref(arch, ids)
        for i in range(1, len(ids)):
            assert_logprob_dict_close(plp[i], ref.prompt_logprobs[i - 1], K, ids[i], ATOL, f"{arch} prompt pos {i}")


@pytest.mark.parametrize("arch", ARCHS)
def test_sample_logprobs_match_hf(tiny, arch):
    outs = _fp32_run(tiny, arch)
    for _prompt, out in zip(PROMPTS, outs, strict=True):
        comp = out.outputs[0]
        ref = tiny.hf_ref(arch, out.prompt_token_ids)
        assert comp.logprobs is not None and len(comp.logprobs) == len(comp.token_ids)
        n = compare_top5(comp.token_ids, ref.tokens, None, [top_ids(r) for r in ref.step_logprobs])
        for i in range(n):
            assert_logprob_dict_close(comp.logprobs[i], ref.step_logprobs[i], K, comp.token_ids[i], ATOL,
                                      f"{arch} step {i}")
        # cumulative_logprob is the sum of the chosen tokens' logprobs.
        total = sum(d[t].logprob for d, t in zip(comp.logprobs, comp.token_ids, strict=True))
        assert math.isclose(comp.cumulative_logprob, total, rel_tol=1e-6, abs_tol=1e-4)
        if n == NEW_TOKENS:
            hf_total = float(ref.step_logprobs[torch.arange(n), torch.tensor(ref.tokens)].sum())
            assert math.isclose(comp.cumulative_logprob, hf_total, abs_tol=NEW_TOKENS * ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_top5_rule(tiny, arch):
    llm = tiny.llm(arch, dtype="bfloat16")
    assert llm.llm_engine.cfg.dtype == torch.bfloat16
    outs = llm.generate(PROMPTS, greedy(logprobs=K), use_tqdm=False)
    assert_engine_clean(llm)
    compared = 0
    for prompt, out in zip(PROMPTS, outs, strict=True):
        comp = out.outputs[0]
        ref = tiny.hf_ref(arch, out.prompt_token_ids, dtype=torch.bfloat16)
        compared += compare_top5(
            comp.token_ids, ref.tokens, [our_top(d) for d in comp.logprobs],
            [top_ids(r) for r in ref.step_logprobs], what=f"{arch} bf16 {prompt[:20]!r}",
        )
    # Low precision may drift, but not from the very first tokens of every sequence.
    assert compared >= len(PROMPTS) * 4


def test_chat_matches_hf(tiny):
    """``chat`` applies the model's template (no extra BOS) and generates HF's greedy tokens."""
    from transformers import AutoTokenizer

    llm = tiny.llm("qwen2")
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    out = llm.chat(conv, greedy(), use_tqdm=False)[0]
    hf_tok = AutoTokenizer.from_pretrained(tiny.path("qwen2"))
    ids = hf_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    assert out.prompt_token_ids == list(ids)
    assert out.prompt.endswith("<|im_start|>assistant\n")
    ref = tiny.hf_ref("qwen2", out.prompt_token_ids)
    assert out.outputs[0].token_ids == ref.tokens
    # A list of conversations gives one output per conversation, in order.
    outs = llm.chat([conv, conv[1:]], greedy(max_tokens=4), use_tqdm=False)
    assert len(outs) == 2 and outs[0].outputs[0].token_ids == ref.tokens[:4]
    assert_engine_clean(llm)


def test_chat_content_parts(tiny):
    """``chat`` reads content parts as the server does (vLLM's rules): text and refusal parts are their text,
    joined by newlines; a part without its text, or of another type, is a ValidationError naming messages."""
    from pagoda.errors import ValidationError

    llm = tiny.llm("qwen2")
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "no\nnever"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
             {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"},
                                               {"type": "text", "text": "never"}]}]
    assert llm.chat_prompt(parts) == llm.chat_prompt(plain)
    for bad, where in (([{"type": "text"}], "messages[0].content[0].text"),
                       ([{"type": "text", "text": "a"}, {"type": "refusal"}], "messages[0].content[1].refusal"),
                       ([{"type": "image_url", "image_url": {"url": "x"}}], "messages[0].content[0]")):
        with pytest.raises(ValidationError, match=re.escape(where)) as e:
            llm.chat([{"role": "user", "content": bad}], greedy(max_tokens=1), use_tqdm=False)
        assert e.value.parameter == "messages"
    with pytest.raises(ValidationError, match="at least one message") as e:
        llm.chat_prompt([])
    assert e.value.parameter == "messages"


def test_top5_rule_helper():
    """The rule itself: equal → full length; divergence inside the top-5 stops there; outside fails."""
    ref = [1, 2, 3, 4]
    top = [{1, 9}, {2, 8, 7}, {3, 6}, {4}]
    assert compare_top5([1, 2, 3, 4], ref, None, top) == 4
    assert compare_top5([1, 8, 0, 0], ref, None, top) == 1  # 8 is in the reference top-5 at 1
    with pytest.raises(AssertionError, match="not in reference top-5"):
        compare_top5([1, 5, 3, 4], ref, None, top)
    with pytest.raises(AssertionError, match="not in our top-5"):
        compare_top5([1, 8, 3, 4], ref, [{1}, {8, 5}, {3}, {4}], top)
    with pytest.raises(AssertionError, match="lengths differ"):
        compare_top5([1, 2, 3], ref, None, top)
    lps = torch.full((4, 10), -10.0)
    lps[1, 2], lps[1, 8] = -1.0, -1.0005
    assert compare_top5([1, 8], ref[:2], None, top[:2], lps, max_gap=1e-3) == 1  # a near-tie
    lps[1, 8] = -1.5
    with pytest.raises(AssertionError, match="not a near-tie"):
        compare_top5([1, 8], ref[:2], None, top[:2], lps, max_gap=1e-3)
