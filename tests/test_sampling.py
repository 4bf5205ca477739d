"""Sampling parameters, checked against references: the model's own log-probabilities (which
test_hf_parity checks against HF), HF ``generate`` and small reference loops on the HF model.

Values and conventions are vLLM's: ``finish_reason`` is "stop" or "length"; ``stop_reason`` is
None for EOS, the token id for ``stop_token_ids`` and the string for ``stop``; the text of a
token-level stop (EOS or a stop token id) is left out unless ``include_stop_str_in_output``.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from engine_checks import PROMPTS, assert_engine_clean, compare_top5, greedy, token_ids, top_ids

from pagoda import SamplingParams

T1 = dict(temperature=1.0, max_tokens=32, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(llama_llm):
    yield llama_llm
    assert_engine_clean(llama_llm)


@pytest.fixture(scope="module")
def tok(llm):
    return llm.get_tokenizer()


@pytest.fixture(scope="module")
def base(llm):
    """Greedy outputs of every prompt (32 tokens, EOS ignored)."""
    return llm.generate(PROMPTS, greedy(logprobs=5), use_tqdm=False)


def clean_decode(tok, ids: list[int]) -> str:
    """What an incremental detokenizer has emitted after ``ids``: held-back partial characters excluded."""
    j = max(j for j in range(len(ids) + 1) if not tok.decode(ids[:j]).endswith("\ufffd"))
    return tok.decode(ids[:j])


# ------------------------------------------------------------------------------------ seeds
def test_seeded_requests_reproduce_across_runs_and_batches(tiny, llm):
    sp = SamplingParams(seed=1234, logprobs=1, **T1)
    alone = llm.generate(PROMPTS[2], sp, use_tqdm=False)[0].outputs[0]
    again = llm.generate(PROMPTS[2], sp, use_tqdm=False)[0].outputs[0]
    assert again.token_ids == alone.token_ids
    # Among seeded, unseeded and greedy requests of other lengths, in two different positions.
    mixed = [
        (PROMPTS[9], SamplingParams(**T1)),
        (PROMPTS[2], sp),
        (PROMPTS[5], SamplingParams(seed=99, **T1)),
        (PROMPTS[0], greedy()),
        (PROMPTS[7], SamplingParams(top_k=5, top_p=0.8, **T1)),
    ]
    outs = llm.generate([p for p, _ in mixed], [s for _, s in mixed], use_tqdm=False)
    assert outs[1].outputs[0].token_ids == alone.token_ids
    outs2 = llm.generate([p for p, _ in reversed(mixed)], [s for _, s in reversed(mixed)], use_tqdm=False)
    assert outs2[3].outputs[0].token_ids == alone.token_ids
    assert outs2[2].outputs[0].token_ids == outs[2].outputs[0].token_ids  # seed 99 too
    # The same in another engine whose steps are shaped differently (8-token chunks, 2 seqs).
    other = tiny.llm("llama", max_num_batched_tokens=8, max_num_seqs=2)
    outs3 = other.generate([p for p, _ in mixed], [s for _, s in mixed], use_tqdm=False)
    assert outs3[1].outputs[0].token_ids == alone.token_ids
    assert outs3[2].outputs[0].token_ids == outs[2].outputs[0].token_ids
    assert_engine_clean(other)
    # The seed matters, and unseeded sampling is not accidentally deterministic.
    other_seed = llm.generate(PROMPTS[2], SamplingParams(seed=1235, **T1), use_tqdm=False)[0].outputs[0]
    assert other_seed.token_ids != alone.token_ids
    u1, u2 = llm.generate([PROMPTS[2]] * 2, SamplingParams(**T1), use_tqdm=False)
    assert u1.outputs[0].token_ids != u2.outputs[0].token_ids


def test_seeded_request_survives_preemption(tiny, llm):
    from pagoda import LLM

    sps = [SamplingParams(seed=100 + i, **T1) for i in range(len(PROMPTS))]
    ref = llm.generate(PROMPTS, sps, use_tqdm=False)
    small = LLM(str(tiny.path("llama")), dtype="float32", num_gpu_blocks_override=24)
    outs = small.generate(PROMPTS, sps, use_tqdm=False)
    assert small.llm_engine.core.scheduler.num_preemptions_total > 0
    assert token_ids(outs) == token_ids(ref)
    assert_engine_clean(small)


# -------------------------------------------------------------------------- truncation rules
def _sample_many(llm, **kw):
    """Every prompt, 32 tokens at T=1 with logprobs=20: list of (chosen, {id: Logprob}) pairs."""
    sps = [SamplingParams(seed=7 + i, logprobs=20, **{**T1, **kw}) for i in range(len(PROMPTS))]
    outs = llm.generate(PROMPTS, sps, use_tqdm=False)
    return [(t, d) for o in outs for t, d in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)]


def _mass_before(d: dict, chosen: int) -> float:
    """Probability (T=1) of the tokens ranked above ``chosen``; they are all among the reported 20."""
    r = d[chosen].rank
    assert r <= 20, f"chosen token has rank {r}; beyond the reported top-20"
    return sum(math.exp(lp.logprob) for lp in d.values() if lp.rank < r)


def test_top_k_never_emits_excluded_tokens(llm):
    free = _sample_many(llm)
    assert any(d[t].rank > 3 for t, d in free), "control: plain sampling should go beyond the top 3"
    for kw in (dict(top_k=3), dict(top_k=3, temperature=0.5), dict(top_k=1, temperature=2.0)):
        samples = _sample_many(llm, **kw)
        k = kw["top_k"]
        bad = [(t, d[t].rank) for t, d in samples if d[t].rank > k]
        assert not bad, f"{kw}: sampled tokens outside the top-{k}: {bad[:5]}"
        if k > 1:
            assert len({d[t].rank for t, d in samples}) == k, "all of the top-k should be drawn sometimes"


def test_top_p_never_emits_excluded_tokens(llm):
    p = 0.1
    free = _sample_many(llm)
    assert any(_mass_before(d, t) > p for t, d in free if d[t].rank <= 20), "control: plain sampling exceeds top_p"
    samples = _sample_many(llm, top_p=p)
    for t, d in samples:
        # Kept: tokens whose higher-ranked mass is below top_p (the smallest set reaching top_p).
        assert _mass_before(d, t) < p + 1e-5
    assert any(d[t].rank > 1 for t, d in samples), "top_p=0.1 should still keep more than the argmax sometimes"


def test_min_p_never_emits_excluded_tokens(llm):
    m = 0.5
    free = _sample_many(llm)
    assert any(d[t].logprob < math.log(m) + max(x.logprob for x in d.values()) for t, d in free)
    samples = _sample_many(llm, min_p=m)
    for t, d in samples:
        top = max(x.logprob for x in d.values())
        assert d[t].logprob >= math.log(m) + top - 1e-5, "token below min_p * p_max"
    assert any(d[t].rank > 1 for t, d in samples)


def test_combined_truncations(llm):
    for t, d in _sample_many(llm, top_k=4, top_p=0.3, min_p=0.2):
        top = max(x.logprob for x in d.values())
        assert d[t].rank <= 4 and _mass_before(d, t) < 0.3 + 1e-5 and d[t].logprob >= math.log(0.2) + top - 1e-5


# ------------------------------------------------------------------------------------ stops
def _boundary_stop(tok, base):
    """A 4-character ASCII stop string spanning a token boundary in some greedy output.

    Returns (prompt index, stop string, number of tokens up to the one completing it)."""
    for pi, o in enumerate(base):
        ids = o.outputs[0].token_ids
        text = o.outputs[0].text
        for k in range(2, len(ids) - 2):
            head = tok.decode(ids[:k])
            if head.endswith("\ufffd") or not text.startswith(head) or len(head) < 2:
                continue
            stop = text[len(head) - 2: len(head) + 2]
            if len(stop) == 4 and stop.isascii() and stop.isprintable() and text.find(stop) == len(head) - 2:
                n = next(j for j in range(k + 1, len(ids) + 1) if stop in clean_decode(tok, ids[:j]))
                return pi, stop, n
    raise AssertionError("no ASCII stop string spanning a token boundary in the greedy outputs")


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(llm, tok, base, include):
    pi, stop, n = _boundary_stop(tok, base)
    full = base[pi].outputs[0]
    out = llm.generate(PROMPTS[pi], greedy(stop=["never-there", stop], include_stop_str_in_output=include),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.token_ids == full.token_ids[:n]  # up to and including the token completing the stop
    cut = full.text.index(stop)
    assert out.text == (full.text[: cut + len(stop)] if include else full.text[:cut])


def test_stop_string_completed_by_the_last_allowed_token_is_a_stop(llm, tok, base):
    """When the token that completes a stop string is also the max_tokens-th, vLLM reports "stop"."""
    pi, stop, n = _boundary_stop(tok, base)
    out = llm.generate(PROMPTS[pi], greedy(max_tokens=n, stop=stop), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base[pi].outputs[0].token_ids[:n]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == base[pi].outputs[0].text[: base[pi].outputs[0].text.index(stop)]


def test_stop_strings_wait_for_min_tokens(llm, tok, base):
    """As in vLLM, a stop string completed within the first min_tokens tokens does not stop."""
    pi, stop, n = _boundary_stop(tok, base)
    full = base[pi].outputs[0]
    out = llm.generate(PROMPTS[pi], greedy(stop=stop, min_tokens=n), use_tqdm=False)[0].outputs[0]
    emitted = len(clean_decode(tok, full.token_ids[:n]))
    later = [i for i in range(len(full.text)) if full.text.startswith(stop, i) and i + len(stop) > emitted]
    if later:
        assert out.finish_reason == "stop" and out.text == full.text[: later[0]]
    else:
        assert out.finish_reason == "length" and out.token_ids == full.token_ids and out.text == full.text
    # One token less and the first occurrence counts again.
    out = llm.generate(PROMPTS[pi], greedy(stop=stop, min_tokens=n - 1), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.token_ids == full.token_ids[:n]


def _stop_token_case(tok, base):
    for pi, o in enumerate(base):
        ids = o.outputs[0].token_ids
        for j in range(3, len(ids) - 1):
            clean = not tok.decode(ids[: j + 1]).endswith("\ufffd") and not tok.decode(ids[:j]).endswith("\ufffd")
            if ids[j] not in ids[:j] and tok.decode([ids[j]]).strip() and clean:
                return pi, j, ids[j]
    raise AssertionError("no suitable stop token")


@pytest.mark.parametrize("include", [False, True])
def test_stop_token_ids(llm, tok, base, include):
    pi, j, stop_tok = _stop_token_case(tok, base)
    full = base[pi].outputs[0].token_ids
    out = llm.generate(PROMPTS[pi], greedy(stop_token_ids=[stop_tok], include_stop_str_in_output=include),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == full[: j + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_tok
    # As in vLLM, the stop token is in token_ids but its text only with include_stop_str_in_output.
    assert out.text == tok.decode(full[: j + 1] if include else full[:j])


def test_eos_and_min_tokens(llm, tok, base):
    eos = tok.eos_token_id
    full = base[3].outputs[0].token_ids
    assert eos not in full[:6]
    force_eos = {eos: 100.0}
    out = llm.generate(PROMPTS[3], SamplingParams(temperature=0, logit_bias=force_eos, max_tokens=10),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [eos] and out.finish_reason == "stop" and out.stop_reason is None and out.text == ""
    # min_tokens bans EOS until it is reached: the model's own greedy tokens come first.
    out = llm.generate(PROMPTS[3], SamplingParams(temperature=0, logit_bias=force_eos, min_tokens=5, max_tokens=10),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == full[:5] + [eos]
    assert out.finish_reason == "stop" and out.stop_reason is None
    assert out.text == tok.decode(full[:5])
    # min_tokens also holds back stop_token_ids.
    st = full[7]
    out = llm.generate(PROMPTS[3], SamplingParams(temperature=0, logit_bias={st: 100.0}, stop_token_ids=[st],
                                                  min_tokens=4, max_tokens=10), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == full[:4] + [st] and out.stop_reason == st
    # ignore_eos: EOS is just another token.
    out = llm.generate(PROMPTS[3], SamplingParams(temperature=0, logit_bias=force_eos, ignore_eos=True, max_tokens=6),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [eos] * 6 and out.finish_reason == "length" and out.stop_reason is None
    # Sampling also honours min_tokens.
    outs = llm.generate([PROMPTS[3]] * 4, SamplingParams(temperature=1.0, logit_bias=force_eos, min_tokens=3,
                                                         max_tokens=10), use_tqdm=False)
    for o in outs:
        assert len(o.outputs[0].token_ids) == 4 and o.outputs[0].token_ids[-1] == eos
        assert eos not in o.outputs[0].token_ids[:3]


def test_max_tokens(llm, base):
    for m in (1, 7):
        out = llm.generate(PROMPTS[4], greedy(max_tokens=m), use_tqdm=False)[0].outputs[0]
        assert out.token_ids == base[4].outputs[0].token_ids[:m]
        assert out.finish_reason == "length" and out.stop_reason is None
    # max_tokens=None: up to the context limit.
    short = llm.llm_engine.cfg.max_model_len
    out = llm.generate(PROMPTS[9], SamplingParams(temperature=0, max_tokens=None, ignore_eos=True),
                       use_tqdm=False)[0]
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == short
    assert out.outputs[0].finish_reason == "length"


# ----------------------------------------------------------------------------------- n > 1
def test_n_greater_than_one(llm):
    out = llm.generate(PROMPTS[2], SamplingParams(n=4, seed=7, **T1), use_tqdm=False)
    assert len(out) == 1
    comps = out[0].outputs
    assert [c.index for c in comps] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in comps}) == 4, "n samples should differ"
    assert all(len(c.token_ids) == 32 and c.finish_reason == "length" for c in comps)
    # Child i is seeded with seed + i (vLLM's rule), so it equals a single request with that seed.
    for c in comps:
        single = llm.generate(PROMPTS[2], SamplingParams(seed=7 + c.index, **T1), use_tqdm=False)[0]
        assert single.outputs[0].token_ids == c.token_ids
    # Unseeded n>1 also gives distinct samples; greedy n>1 gives n copies of the greedy output.
    un = llm.generate(PROMPTS[2], SamplingParams(n=3, **T1), use_tqdm=False)[0].outputs
    assert len({tuple(c.token_ids) for c in un}) == 3
    g = llm.generate([PROMPTS[2], PROMPTS[0]], greedy(n=3), use_tqdm=False)
    base = llm.generate([PROMPTS[2], PROMPTS[0]], greedy(), use_tqdm=False)
    for o, b in zip(g, base, strict=True):
        assert [c.token_ids for c in o.outputs] == [b.outputs[0].token_ids] * 3


# ---------------------------------------------------------------------------- logit_bias
def test_logit_bias(llm, base):
    target = 123
    out = llm.generate(PROMPTS[1], greedy(max_tokens=8, logit_bias={target: 100.0}), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [target] * 8
    # A strong negative bias on the greedy choice gives the runner-up (rank 2 of the model's logprobs).
    first = base[1].outputs[0].token_ids[0]
    runner_up = next(t for t, lp in base[1].outputs[0].logprobs[0].items() if lp.rank == 2)
    out = llm.generate(PROMPTS[1], greedy(max_tokens=1, logit_bias={first: -100.0}), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [runner_up]


# ---------------------------------------------------------------------------- penalties
def _reference_penalized_greedy(hf, prompt_ids, n, presence=0.0, frequency=0.0):
    """Greedy decoding on the HF model with OpenAI/vLLM presence and frequency penalties (output tokens)."""
    ids = list(prompt_ids)
    out: list[int] = []
    lps = []
    with torch.no_grad():
        for _ in range(n):
            logits = hf(torch.tensor([ids])).logits[0, -1].float()
            if out:
                counts = torch.bincount(torch.tensor(out), minlength=logits.shape[0]).float()
                logits = logits - frequency * counts - presence * (counts > 0).float()
            lps.append(torch.log_softmax(logits, -1))
            t = int(logits.argmax())
            out.append(t)
            ids.append(t)
    return out, torch.stack(lps)


def test_repetition_penalty_matches_hf(tiny, llm, base):
    from transformers import GenerationConfig

    hf = tiny.hf("llama")
    for i in (1, 4, 8):
        ids = base[i].prompt_token_ids
        gc = GenerationConfig(max_new_tokens=32, do_sample=False, repetition_penalty=1.8, eos_token_id=None,
                              pad_token_id=0)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), generation_config=gc)[0, len(ids):].tolist()
        out = llm.generate(PROMPTS[i], greedy(repetition_penalty=1.8), use_tqdm=False)[0].outputs[0]
        assert out.token_ids == ref
        assert out.token_ids != base[i].outputs[0].token_ids


@pytest.mark.parametrize("kw", [dict(presence=1.5), dict(frequency=0.7), dict(presence=0.5, frequency=0.5)])
def test_presence_and_frequency_penalties_match_reference(tiny, llm, base, kw):
    hf = tiny.hf("llama")
    changed = 0
    for i in (0, 3, 6):
        ref, lps = _reference_penalized_greedy(hf, base[i].prompt_token_ids, 32, **kw)
        out = llm.generate(PROMPTS[i], greedy(presence_penalty=kw.get("presence", 0.0),
                                              frequency_penalty=kw.get("frequency", 0.0)), use_tqdm=False)[0]
        n = compare_top5(out.outputs[0].token_ids, ref, None, [top_ids(r) for r in lps], lps, 1e-3, what=str(kw))
        assert n == 32
        changed += out.outputs[0].token_ids != base[i].outputs[0].token_ids
        # Penalising repeats makes outputs at least as varied as plain greedy.
        assert len(set(out.outputs[0].token_ids)) >= len(set(base[i].outputs[0].token_ids))
    assert changed, "the penalties should change some greedy outputs"


# ------------------------------------------------------------------ generation_config defaults
def test_generation_config_defaults(tiny, tmp_path, base):
    from pagoda import LLM

    folder = tmp_path / "with_gen_cfg"
    shutil.copytree(tiny.path("llama"), folder)
    cfg = json.loads((folder / "generation_config.json").read_text())
    cfg.update(temperature=0.6, top_p=0.9, top_k=1, repetition_penalty=1.0, max_new_tokens=12, min_p=0.0)
    (folder / "generation_config.json").write_text(json.dumps(cfg))
    llm = LLM(str(folder), dtype="float32")
    d = llm.get_default_sampling_params()
    assert (d.temperature, d.top_p, d.top_k, d.max_tokens) == (0.6, 0.9, 1, 12)
    # generate() without params uses them: top_k=1 makes it greedy, max_new_tokens caps the length.
    outs = llm.generate(PROMPTS[:6], use_tqdm=False)
    ref = llm.generate(PROMPTS[:6], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    assert token_ids(outs) == token_ids(ref)
    assert all(len(t) <= 12 for t in token_ids(outs)) and any(len(t) == 12 for t in token_ids(outs))
    for o, b in zip(outs, base[: len(outs)], strict=True):  # outs: the first 6 prompts
        t = o.outputs[0].token_ids
        assert t == b.outputs[0].token_ids[: len(t)]
    assert_engine_clean(llm)
    # generation_config="vllm" ignores the file.
    plain = LLM(str(folder), dtype="float32", generation_config="vllm")
    d = plain.get_default_sampling_params()
    assert (d.temperature, d.top_p, d.top_k, d.max_tokens) == (1.0, 1.0, 0, 16)


def test_greedy_argmax_is_argmax_with_ties_and_nans():
    from pagoda.layers.sampler import greedy_argmax

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randint(-3, 4, (64, 4099), generator=gen).to(dtype)  # many ties for the maximum
        x[5, 100] = x[5, 7] = float("nan")  # a NaN is maximal: argmax picks the first
        x[6, :] = float("-inf")
        x[7, 3] = float("inf")
        assert torch.equal(greedy_argmax(x), x.argmax(dim=-1))
        assert torch.equal(greedy_argmax(x[:, 10:2000]), x[:, 10:2000].argmax(dim=-1))  # rows strided in memory
    v = torch.randn(1000, generator=gen)
    for odd in (v.reshape(1000, 1).t(), v[None].expand(3, 1000), v[None, ::2]):  # overlapping or strided rows
        assert torch.equal(greedy_argmax(odd), odd.argmax(dim=-1))
    assert torch.equal(greedy_argmax(x[:0]), x[:0].argmax(dim=-1))


def test_the_native_cpu_argmax_serves_avx512_cpus():
    from pagoda.layers import argmax

    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        pytest.skip("the native argmax is AVX-512 code")
    assert argmax._cpu_lib() is not None  # compiled and agreed with torch.argmax in its self-check
