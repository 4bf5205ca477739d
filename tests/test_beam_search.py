"""Beam search matches HF ``generate(num_beams=k, num_return_sequences=k)`` on the same weights (fp32).

Two regimes: EOS disabled (``ignore_eos`` here, ``eos_token_id=None`` in HF), where every beam
runs to ``max_tokens``; and EOS enabled on a copy of the tiny model whose generation config makes
a few frequently chosen tokens EOS ids, so beams do end early (the test asserts that they do)
and HF's finishing rules (only hits among the top ``k`` candidates finish, ``early_stopping``
True / False / "never", the length penalty) decide the result. Token sequences must be equal;
scores (HF's ``sequences_scores``) within 1e-4.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import pytest
import torch
from engine_checks import PROMPTS, assert_engine_clean

from pagoda import BeamSearchOutput, BeamSearchParams

BEAM_PROMPTS = [PROMPTS[1], PROMPTS[2], PROMPTS[3], PROMPTS[5], PROMPTS[6]]
MAX_TOKENS = 10
SCORE_ATOL = 1e-4


def hf_beam(model, prompt_ids: list[int], params: BeamSearchParams, eos_ids: list[int] | None):
    """HF beam search: (generated tokens of each returned sequence, cut after its EOS; scores)."""
    from transformers import GenerationConfig

    k = params.beam_width
    gc = GenerationConfig(
        max_new_tokens=params.max_tokens, min_new_tokens=0, num_beams=k, num_return_sequences=k, do_sample=False,
        early_stopping=params.early_stopping, length_penalty=params.length_penalty, eos_token_id=eos_ids,
        pad_token_id=0, output_scores=True, return_dict_in_generate=True,
    )
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), generation_config=gc)
    seqs = []
    for row in out.sequences.tolist():
        gen = row[len(prompt_ids):]
        for i, t in enumerate(gen):
            if eos_ids and t in eos_ids:
                gen = gen[: i + 1]
                break
        seqs.append(gen)
    return seqs, out.sequences_scores.tolist()


def check_against_hf(hf_model, out: BeamSearchOutput, prompt_ids: list[int], params: BeamSearchParams,
                     eos_ids: list[int] | None, what: str) -> list[str]:
    """Assert equality with HF; returns the finish reasons (for the caller's coverage checks)."""
    ref_seqs, ref_scores = hf_beam(hf_model, prompt_ids, params, eos_ids)
    ours = [s.tokens[len(prompt_ids):] for s in out.sequences]
    assert all(s.tokens[: len(prompt_ids)] == prompt_ids for s in out.sequences), what
    assert ours == ref_seqs, f"{what}: beams differ\n ours {ours}\n HF   {ref_seqs}"
    for s, ref in zip(out.sequences, ref_scores, strict=True):
        gen = s.tokens[len(prompt_ids):]
        assert math.isclose(s.score, ref, abs_tol=SCORE_ATOL), f"{what}: score {s.score} vs HF {ref}"
        # The score is HF's: cumulative logprob over the generated length (EOS counted).
        assert math.isclose(s.score, s.cum_logprob / len(gen) ** params.length_penalty, rel_tol=1e-9, abs_tol=1e-9)
        # cum_logprob is the sum of the chosen tokens' raw logprobs, each from that step's top candidates.
        assert len(s.logprobs) == len(gen)
        assert all(t in d for t, d in zip(gen, s.logprobs, strict=True)), what
        total = sum(d[t].logprob for t, d in zip(gen, s.logprobs, strict=True))
        assert math.isclose(s.cum_logprob, total, rel_tol=1e-6, abs_tol=1e-6)
        ended = bool(eos_ids) and gen[-1] in eos_ids
        assert s.finish_reason == ("stop" if ended else "length"), what
        assert s.stop_reason == (gen[-1] if ended else None)
        if not ended:
            assert len(gen) == params.max_tokens, what
    assert [s.score for s in out.sequences] == sorted((s.score for s in out.sequences), reverse=True)
    return [s.finish_reason for s in out.sequences]


@pytest.fixture(scope="module")
def eos_setup(tiny, tmp_path_factory):
    """A copy of the tiny Llama whose generation config adds three often-chosen tokens as EOS ids."""
    from pagoda import LLM

    llm = tiny.llm("llama")
    tok = llm.get_tokenizer()
    free = BeamSearchParams(beam_width=4, max_tokens=MAX_TOKENS, ignore_eos=True)
    outs = llm.beam_search([tok.encode(p) for p in BEAM_PROMPTS], free)
    counts = Counter(t for o in outs for s in o.sequences[:2] for t in s.tokens[-MAX_TOKENS:][1:6])
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, 0}
    chosen = [t for t, _ in counts.most_common() if t not in special][:3]
    folder = tmp_path_factory.mktemp("beam") / "llama-eos"
    shutil.copytree(tiny.path("llama"), folder)
    gen_cfg = json.loads((folder / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = [tok.eos_token_id, *chosen]
    (folder / "generation_config.json").write_text(json.dumps(gen_cfg))
    eos_llm = LLM(str(folder), dtype="float32", kv_cache_memory_bytes=64 * 2**20)
    eos_ids = eos_llm.llm_engine.input_processor.eos_token_ids
    assert sorted(eos_ids) == sorted({tok.eos_token_id, *chosen})
    return eos_llm, eos_ids


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("beam_width", [2, 4])
def test_beam_search_matches_hf_without_eos(tiny, arch, beam_width):
    llm = tiny.llm(arch)
    tok = llm.get_tokenizer()
    params = BeamSearchParams(beam_width=beam_width, max_tokens=MAX_TOKENS, ignore_eos=True)
    prompts = [tok.encode(p) for p in BEAM_PROMPTS]
    outs = llm.beam_search([{"prompt_token_ids": ids} for ids in prompts], params)
    assert len(outs) == len(prompts)
    for ids, out, text in zip(prompts, outs, BEAM_PROMPTS, strict=True):
        assert len(out.sequences) == beam_width
        reasons = check_against_hf(tiny.hf(arch), out, ids, params, None, f"{arch} k={beam_width} {text!r}")
        assert set(reasons) == {"length"}
        # vLLM's text: the decode of the whole sequence, prompt included.
        assert all(s.text == tok.decode(s.tokens) for s in out.sequences)
    assert_engine_clean(llm)


CASES = [  # (beam_width, early_stopping, length_penalty)
    (2, False, 1.0),
    (4, False, 1.0),
    (3, True, 1.0),
    (4, "never", 2.0),
    (3, "never", 1.0),
    (3, False, 0.0),
    (4, False, -0.5),
]


def test_beam_search_matches_hf_with_eos(tiny, eos_setup):
    llm, eos_ids = eos_setup
    tok = llm.get_tokenizer()
    hf_model = tiny.hf("llama")
    reasons: Counter = Counter()
    mixed = 0
    for beam_width, early_stopping, lp in CASES:
        params = BeamSearchParams(beam_width=beam_width, max_tokens=MAX_TOKENS, early_stopping=early_stopping,
                                  length_penalty=lp)
        prompts = [tok.encode(p) for p in BEAM_PROMPTS]
        outs = llm.beam_search(prompts, params)
        for ids, out, text in zip(prompts, outs, BEAM_PROMPTS, strict=True):
            what = f"k={beam_width} early_stopping={early_stopping} lp={lp} {text!r}"
            r = check_against_hf(hf_model, out, ids, params, eos_ids, what)
            reasons.update(r)
            mixed += len(set(r)) == 2
    # The EOS rules were exercised: beams ended on EOS, others ran to max_tokens, often side by side.
    assert reasons["stop"] >= 10 and reasons["length"] >= 10, reasons
    assert mixed >= 3, mixed
    assert_engine_clean(llm)


def test_beam_search_batch_and_concurrency_invariant(tiny, eos_setup):
    """All prompts at once, one at a time, and concurrency_limit=1 give the same beams."""
    llm, _ = eos_setup
    params = BeamSearchParams(beam_width=3, max_tokens=MAX_TOKENS)
    together = llm.beam_search(BEAM_PROMPTS, params)
    limited = llm.beam_search(BEAM_PROMPTS, params, concurrency_limit=1)
    alone = [llm.beam_search(p, params)[0] for p in BEAM_PROMPTS]
    tokens = lambda outs: [[s.tokens for s in o.sequences] for o in outs]  # noqa: E731
    assert tokens(together) == tokens(limited) == tokens(alone)
    # Logprobs agree up to fp32 rounding of differently sized batches.
    for a, b, c in zip(together, limited, alone, strict=True):
        for x, y, z in zip(a.sequences, b.sequences, c.sequences, strict=True):
            assert math.isclose(x.cum_logprob, y.cum_logprob, abs_tol=SCORE_ATOL)
            assert math.isclose(x.cum_logprob, z.cum_logprob, abs_tol=SCORE_ATOL)
    # A text prompt is tokenized like generate() does (BOS added by the tokenizer, if any).
    tok = llm.get_tokenizer()
    assert together[0].sequences[0].tokens[: len(tok.encode(BEAM_PROMPTS[0]))] == tok.encode(BEAM_PROMPTS[0])
    assert_engine_clean(llm)


def test_beam_search_reuses_prefix_cache(tiny):
    """Each step resubmits prompt + beam; prefix caching serves the already computed full blocks."""
    llm = tiny.llm("llama")
    kv = llm.llm_engine.core.kv
    prompt = PROMPTS[-1]  # ~100 tokens: several full blocks
    n_prompt = len(llm.get_tokenizer().encode(prompt))
    before_q, before_h = kv.prefix_cache_queries, kv.prefix_cache_hits
    llm.beam_search(prompt, BeamSearchParams(beam_width=2, max_tokens=8, ignore_eos=True))
    queries, hits = kv.prefix_cache_queries - before_q, kv.prefix_cache_hits - before_h
    # 1 + 2 * 7 requests of about n_prompt tokens; all but the first find the prompt's full blocks.
    assert hits >= 14 * (n_prompt // 16) * 16, (hits, queries)
    assert_engine_clean(llm)


def test_beam_logprobs_carry_their_text(tiny):
    """Each returned token's logprob entries have their decoded_token, as vLLM's beam search gives them."""
    llm = tiny.llm("llama")
    tok = llm.get_tokenizer()
    out = llm.beam_search(PROMPTS[0], BeamSearchParams(beam_width=2, max_tokens=4, ignore_eos=True))[0]
    for seq in out.sequences:
        for d in seq.logprobs:
            assert all(v.decoded_token == tok.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False)
                       for t, v in d.items())
    assert_engine_clean(llm)


def test_beam_search_validation(tiny):
    llm = tiny.llm("llama")
    with pytest.raises(ValueError, match="max_logprobs=20"):  # 2 x 11 candidates > 20 logprobs
        llm.beam_search("Hi", BeamSearchParams(beam_width=11, max_tokens=4))
    # With ignore_eos no EOS candidates are needed, still 2 per beam: beam width 10 is the most.
    llm.beam_search("Hi", BeamSearchParams(beam_width=10, max_tokens=2, ignore_eos=True))
    with pytest.raises(ValueError, match="maximum context length"):
        llm.beam_search("Hi", BeamSearchParams(beam_width=2, max_tokens=llm.llm_engine.cfg.max_model_len))
    for bad in ({"beam_width": 0}, {"max_tokens": 0}, {"length_penalty": float("nan")}, {"early_stopping": "x"},
                {"temperature": -1.0}):
        kwargs = {"beam_width": 2, "max_tokens": 4, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            BeamSearchParams(**kwargs)
    with pytest.raises(ValueError, match="empty"):
        llm.beam_search([], BeamSearchParams(beam_width=2, max_tokens=4))
    assert_engine_clean(llm)


def _lp(pairs: dict[int, float]):
    from pagoda.outputs import Logprob

    ranked = sorted(pairs.items(), key=lambda kv: -kv[1])
    return {t: Logprob(v, rank=i + 1) for i, (t, v) in enumerate(ranked)}


def test_instance_rules_with_fake_logprobs():
    """HF's rules without a model: only EOS hits among the top beam_width candidates finish;
    early_stopping=True stops once beam_width hypotheses are finished; the server's view drops a
    final EOS from the text (and from token_ids unless include_stop_str_in_output)."""
    from pagoda.beam_search import BeamSearchInstance

    EOS = 9
    params = BeamSearchParams(beam_width=2, max_tokens=5, early_stopping=True)
    inst = BeamSearchInstance([1, 2], params, [EOS])
    assert inst.k == 4 and inst.pending() == [[1, 2]]
    # Step 1: EOS is the 3rd best candidate: it is dropped, neither finished nor live.
    inst.advance([_lp({5: -0.1, 6: -0.5, EOS: -1.0, 7: -2.0})])
    assert inst.pending() == [[1, 2, 5], [1, 2, 6]] and inst.finished == []
    # Step 2: beam [5]'s EOS is the best candidate: finished with score (-0.1 - 0.2) / 2.
    inst.advance([_lp({EOS: -0.2, 3: -0.3, 4: -3.0, 8: -4.0}), _lp({3: -0.1, 4: -0.2, EOS: -5.0, 8: -6.0})])
    assert [(round(s, 6), b.tokens) for s, b in inst.finished] == [(-0.15, [5, EOS])]
    assert inst.pending() == [[1, 2, 5, 3], [1, 2, 6, 3]] and not inst.done
    # Step 3: another EOS in the top 2 fills the finished list; early_stopping=True ends the search.
    inst.advance([_lp({EOS: -0.1, 4: -0.2, 3: -3.0, 8: -4.0}), _lp({3: -2.0, 4: -2.5, EOS: -3.0, 8: -6.0})])
    assert inst.done and inst.pending() == []
    seqs = inst.sequences()
    assert [s.tokens for s in seqs] == [[1, 2, 5, EOS], [1, 2, 5, 3, EOS]]
    assert [s.finish_reason for s in seqs] == ["stop", "stop"] and seqs[0].stop_reason == EOS

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return ",".join(map(str, ids))

    out = inst.request_output("r", Tok())
    assert [c.text for c in out.outputs] == ["5", "5,3"]
    assert [c.token_ids for c in out.outputs] == [[5], [5, 3]]
    assert [len(c.logprobs) for c in out.outputs] == [1, 2]
    inst.params = BeamSearchParams(beam_width=2, max_tokens=5, include_stop_str_in_output=True)
    assert [c.token_ids for c in inst.request_output("r", Tok()).outputs] == [[5, EOS], [5, 3, EOS]]


def test_step_logprobs_put_the_chosen_token_first():
    """Each token's logprobs are shaped as a sampled token's: the chosen token first, then the others by rank;
    the server's view cuts them to the client's count as ``logprobs=N`` does (the chosen token plus the top N)."""
    from pagoda.beam_search import BeamSearchInstance

    inst = BeamSearchInstance([1], BeamSearchParams(beam_width=2, max_tokens=2, ignore_eos=True), [])
    inst.advance([_lp({5: -0.1, 6: -0.5, 7: -1.0, 8: -2.0})])
    inst.advance([_lp({3: -0.1, 4: -0.2, 2: -3.0, 9: -4.0}), _lp({3: -2.0, 4: -2.5, 2: -3.0, 9: -6.0})])
    seqs = inst.sequences()
    assert [s.tokens for s in seqs] == [[1, 5, 3], [1, 5, 4]]
    assert list(seqs[1].logprobs[1]) == [4, 3, 2, 9]  # chosen 4 (rank 2) first, then ranks 1, 3, 4

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return ",".join(map(str, ids))

    out = inst.request_output("r", Tok(), num_logprobs=0)
    assert [[list(d) for d in c.logprobs] for c in out.outputs] == [[[5], [3]], [[5], [4]]]
    out = inst.request_output("r", Tok(), num_logprobs=1)  # rank 1 chosen: itself; rank 2 chosen: + rank 1
    assert [[list(d) for d in c.logprobs] for c in out.outputs] == [[[5], [3]], [[5], [4, 3]]]
    out = inst.request_output("r", Tok(), num_logprobs=2)
    assert [list(d) for d in out.outputs[1].logprobs] == [[5, 6], [4, 3]]
    assert out.outputs[1].logprobs[1][4].rank == 2 and out.prompt_logprobs is None
