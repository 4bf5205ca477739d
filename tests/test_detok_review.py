"""Detokenization and stop strings against HF ``tokenizer.decode``, on the tiny models' byte-level BPE tokenizer and
on a SentencePiece-style byte-fallback tokenizer (Llama's decoder: ``▁`` as a space, byte tokens fused, the first
space stripped).

* When the prompt ends inside a character, the output's first character takes the prompt's bytes (as vLLM's
  ``DecodeStream`` stepped through the prompt gives it), instead of being lost;
* once finished, the text is the decode of every output token: text held back for an incomplete character at the
  end is not lost (nor a whole character before it), and stop strings are looked for in it;
* of the stop strings matched in one token's text, the one that ends first wins (vLLM's ``check_stop_strings``).
"""

from __future__ import annotations

import json
import random

import pytest
from engine_checks import PROMPTS

from pagoda.engine.detokenizer import IncrementalDetokenizer
from pagoda.engine.messages import EngineCoreOutput
from pagoda.engine.output_processor import OutputProcessor
from pagoda.sampling_params import RequestOutputKind, SamplingParams


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.path("llama"))


@pytest.fixture(scope="module")
def sp_tok():
    """A tiny SentencePiece-style BPE with byte fallback: characters outside its ASCII alphabet are byte tokens."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=list("▁abcdefghijklmnopqrstuvwxyz.,"))
    t.train_from_iterator(["the quick brown fox jumps over the lazy dog. hello world, a b c."] * 20, trainer)
    spec = json.loads(t.to_str())
    for b in range(256):
        spec["model"]["vocab"].setdefault(f"<0x{b:02X}>", len(spec["model"]["vocab"]))
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    assert fast.convert_ids_to_tokens(fast.encode("日", add_special_tokens=False)) == ["▁", "<0xE6>", "<0x97>",
                                                                                       "<0xA5>"]
    return fast


TEXTS = ["the 日本語 fox 🙂🙂 ok", "héllo wörld — naïve", "a b c. テキスト", "🙂", "the quick brown fox"]


def _whole_characters(tokenizer, prompt: list[int], byte_fallback: bool) -> str:
    """The prompt's text less an incomplete character at its end: a byte-level decoder shows each of its bytes as
    U+FFFD; a byte-fallback decoder shows its whole run of byte tokens so (one byte each: cut them off)."""
    if byte_fallback:
        j = max(j for j in range(len(prompt) + 1) if not tokenizer.decode(prompt[:j]).endswith("\ufffd"))
        return tokenizer.decode(prompt[:j])
    return tokenizer.decode(prompt).rstrip("\ufffd")


@pytest.mark.parametrize("which", ["tok", "sp_tok"])
def test_a_prompt_cut_inside_a_character_gives_that_character_to_the_output(request, which):
    """Texts cut anywhere (often inside a character, with byte-level tokens that each straddle characters, or a
    byte-fallback run): the output's text is what the prompt and output decode to past the prompt's whole
    characters, both while running and finished. vLLM's ``DecodeStream`` stepped through the prompt gives the same
    where the prompt's last tokens end on a character; where each ends inside one, it repeats the prompt's text."""
    tokenizer = request.getfixturevalue(which)
    rng = random.Random(3)
    cut_inside = 0
    for _ in range(300):
        text = rng.choice(TEXTS) + rng.choice(["", " ", "日本"]) + rng.choice(TEXTS)
        ids = tokenizer.encode(text, add_special_tokens=False)
        k = rng.randrange(len(ids) + 1)
        prompt, out = ids[:k], ids[k:]
        cut_inside += tokenizer.decode(prompt).endswith("\ufffd")
        detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=rng.random() < 0.5)
        for t in out:
            detok.add_token(t)
        head = _whole_characters(tokenizer, prompt, which == "sp_tok")
        whole = tokenizer.decode(prompt + out)
        assert whole.startswith(head) and detok.text == whole[len(head):], (prompt, out)
        detok.finish()
        assert detok.text == whole[len(head):]
    assert cut_inside > 50  # control


def _feed(detok: IncrementalDetokenizer, out: list[int]) -> tuple[str, list[str]]:
    """Add ``out`` then finish: (the streamed deltas joined, the running shown texts)."""
    streamed, shown = "", []
    for t in out:
        detok.add_token(t)
        streamed += detok.take_stream_delta(finished=False)
        shown.append(detok.shown_text(finished=False))
    detok.finish()
    return streamed + detok.take_stream_delta(finished=True), shown


def test_final_text_is_the_decode_of_every_output_token(tok):
    """Random tokens (invalid UTF-8 included) from an empty or a whole-character prompt: once finished, the text is
    ``tokenizer.decode(out)``, a trailing incomplete character as U+FFFD, and the streamed deltas join to it."""
    rng = random.Random(5)
    ended_inside = 0
    for _ in range(400):
        prompt = tok.encode(rng.choice(["", "Hi", "日本語", "🙂 ok"]), add_special_tokens=False)
        out = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 12))]
        skip = rng.random() < 0.5
        detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
        streamed, shown = _feed(detok, out)
        want = tok.decode(out, skip_special_tokens=skip)
        assert detok.text == want == streamed, (prompt, out, skip)
        assert all(want.startswith(s) for s in shown)
        ended_inside += want.endswith("\ufffd")
    assert ended_inside > 50  # control: many outputs end inside a character


def test_first_space_stripping_byte_fallback_decoder(sp_tok):
    """Valid text of the byte-fallback tokenizer cut anywhere on whole characters: the output's text is the decode of
    prompt and output less the prompt's (the output's first space kept, as the tokenizer decodes it in context)."""
    rng = random.Random(7)
    checked = 0
    for _ in range(300):
        ids = sp_tok.encode(rng.choice(TEXTS) + " " + rng.choice(TEXTS), add_special_tokens=False)
        a = rng.randrange(len(ids))
        b = rng.randrange(a + 1, len(ids) + 1)
        prompt, out = ids[:a], ids[a:b]
        if sp_tok.decode(prompt).endswith("\ufffd") or sp_tok.decode(prompt + out).endswith("\ufffd"):
            continue
        detok = IncrementalDetokenizer(sp_tok, prompt)
        streamed, _ = _feed(detok, out)
        whole, head = sp_tok.decode(prompt + out), sp_tok.decode(prompt)
        assert detok.text == streamed == whole[len(head):], (prompt, out)
        checked += 1
    assert checked > 100


def test_a_byte_fallback_run_made_invalid_by_its_last_byte_keeps_the_characters_before(sp_tok):
    """ByteFallback decodes a run of byte tokens with an incomplete character as U+FFFD for every byte (``decode``
    gives " �����" for "🙂" and the first byte of another); the streamed "🙂" stays, the incomplete byte is U+FFFD."""
    emoji = sp_tok.encode("🙂🙂", add_special_tokens=False)
    out = emoji[:6]  # "▁", the 4 bytes of "🙂", the first byte of the next
    assert sp_tok.convert_ids_to_tokens(out)[0] == "▁" and len(emoji) == 9
    assert sp_tok.decode(sp_tok.encode("fox", add_special_tokens=False) + out) == "fox " + "\ufffd" * 5
    for then, want in (([], " 🙂\ufffd"), (sp_tok.encode("ok", add_special_tokens=False), " 🙂\ufffd ok")):
        detok = IncrementalDetokenizer(sp_tok, sp_tok.encode("fox", add_special_tokens=False))
        streamed, shown = _feed(detok, out + then)
        assert detok.text == streamed == want
        assert " 🙂" in shown


def test_a_prompt_whose_last_tokens_start_inside_a_character_does_not_garble_the_output(sp_tok):
    """"🙂日" is 8 tokens ("▁" and 7 bytes): its last 6 start inside "🙂", which ByteFallback decodes as U+FFFD for the
    whole run, the output's bytes of "本語" with it, had the window started there."""
    prompt = sp_tok.encode("🙂日", add_special_tokens=False)
    out = sp_tok.encode("🙂日本語", add_special_tokens=False)[len(prompt):]
    assert len(prompt) == 8 and len(out) == 6
    detok = IncrementalDetokenizer(sp_tok, prompt)
    streamed, _ = _feed(detok, out)
    assert detok.text == streamed == "本語"


def _only_token(tok, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, f"{text!r} must be one token of the tiny vocabulary"
    return ids[0]


@pytest.mark.parametrize(("stops", "include", "want_text", "want_stop"), [
    ([" capital", "pit"], False, " ca", "pit"),  # "pit" is complete 3 characters before " capital"
    ([" capital", "pit"], True, " capit", "pit"),
    ([" capital", " cap"], True, " cap", " cap"),  # one a prefix of the other: the shorter ends first
    ([" cap", " capital"], False, "", " cap"),
    (["capital", "al"], True, " capital", "capital"),  # both end at the last character: the first listed wins
    (["al", "capital"], False, " capit", "al"),
])
def test_the_stop_string_that_ends_first_wins(tok, stops, include, want_text, want_stop):
    """Stop strings completed by one token: the result is the one a character-by-character check gives (vLLM's
    rule), not a function of how much text one token carries."""
    detok = IncrementalDetokenizer(tok, tok.encode("Paris is the"), stop=stops, include_stop_str_in_output=include)
    assert detok.add_token(_only_token(tok, " capital")) == want_stop
    assert detok.text == want_text


def _partial_token(tok) -> tuple[int, str]:
    """A token whose text is ASCII letters and the first byte of a multi-byte character (e.g. ``h`` + 0xC3)."""
    for t in range(len(tok)):
        s = tok.decode([t])
        if len(s) > 1 and s.endswith("\ufffd") and s[:-1].isascii() and s[:-1].isalpha():
            return t, s[:-1]
    raise AssertionError("no such token in the tiny vocabulary")


def _processor_run(tok, params: SamplingParams, out: list[int], finish: str):
    op = OutputProcessor(tok)
    op.add_request("r", None, tok.encode("Hi"), params)
    results, _ = op.process([EngineCoreOutput("r", out[:-1])] if len(out) > 1 else [])
    results, _ = op.process([EngineCoreOutput("r", out[-1:], finish_reason=finish)])
    return results[-1].outputs[0]


def test_text_held_back_at_the_finish_is_output(tok):
    t, letters = _partial_token(tok)
    a = _only_token(tok, " capital")
    c = _processor_run(tok, SamplingParams(max_tokens=2), [a, t], "length")
    assert (c.text, c.finish_reason) == (tok.decode([a, t]), "length")
    assert c.text == " capital" + letters + "\ufffd"


def test_a_stop_string_completed_by_text_held_back_at_the_finish_ends_the_output(tok):
    """The held-back text is searched for stop strings like any other: the one it completes ends the output (and
    wins over the core's length finish), never shown."""
    t, letters = _partial_token(tok)
    a = _only_token(tok, " capital")
    for include in (False, True):
        params = SamplingParams(max_tokens=2, stop=["l" + letters], include_stop_str_in_output=include)
        c = _processor_run(tok, params, [a, t], "length")
        assert (c.finish_reason, c.stop_reason) == ("stop", "l" + letters)
        assert c.text == (" capital" + letters if include else " capita")


def test_held_back_prompt_bytes_alone_are_not_output(tok):
    """A prompt cut inside a character and an output whose only token is a stop token left out of the text: the
    prompt's bytes are not the output's."""
    ids = tok.encode("日本", add_special_tokens=False)
    k = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd"))
    op = OutputProcessor(tok)
    op.add_request("r", None, ids[:k], SamplingParams(max_tokens=2))
    results, _ = op.process([EngineCoreOutput("r", [tok.eos_token_id], finish_reason="stop")])
    assert results[-1].outputs[0].text == ""


def test_engine_text_is_the_decode_of_its_tokens_and_deltas_join_to_it(llama_llm):
    """Sampled outputs of the tiny model (often cut inside a character): the final text is ``tokenizer.decode`` of
    the tokens (less a final EOS), and the DELTA outputs of the same request join to it."""
    llm = llama_llm
    tok = llm.get_tokenizer()
    prompt = PROMPTS[5]
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=30, logprobs=1) for s in range(8)]
    finals = [o.outputs[0] for o in llm.generate([prompt] * len(params), params, use_tqdm=False)]
    ended_inside = 0
    eng = llm.llm_engine
    for p, final in zip(params, finals, strict=True):
        ids = final.token_ids
        if final.finish_reason == "stop" and ids and ids[-1] == tok.eos_token_id:
            ids = ids[:-1]
        assert final.text == tok.decode(ids), p.seed
        ended_inside += final.text.endswith("\ufffd")
        delta = p.clone()
        delta.output_kind = RequestOutputKind.DELTA
        eng.add_request(f"delta-{p.seed}", prompt, delta)
        texts, tokens = [], []
        while eng.has_unfinished_requests():
            for o in eng.step():
                texts += [c.text for c in o.outputs]
                tokens += [t for c in o.outputs for t in c.token_ids]
        assert ("".join(texts), tokens) == (final.text, final.token_ids), p.seed
        assert [lp[t].decoded_token for lp, t in zip(final.logprobs, final.token_ids, strict=True)] == \
            [tok.decode([t]) for t in final.token_ids]
    assert ended_inside >= 1  # control: an output cut inside a character
