"""Incremental detokenization against full decoding, with the tiny models' byte-level BPE tokenizer
(whose tokens often split multi-byte characters), plus stop strings and streaming holdback.
"""

from __future__ import annotations

import pytest

from pagoda.engine.detokenizer import IncrementalDetokenizer

TEXTS = [
    "héllo wörld — ünïcode",
    "日本語 テキスト",
    "🙂 emoji 🙂🙂 and more 🎉",
    "Ça coûte 5 €, naïve café, Ångström, œuvre",
    "The quick brown fox jumps over the lazy dog. 日本語🙂",
    "Paris is the capital of France. Berlin is the capital of Germany.",
]


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.path("llama"))


def feed(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    """Add tokens one by one; returns the text after each; stops at the first stop string."""
    texts = []
    for t in ids:
        hit = detok.add_token(t)
        texts.append(detok.text)
        if hit is not None:
            break
    return texts


def test_tokenizer_splits_characters(tok):
    """The cases below are only meaningful if single tokens can be partial UTF-8 characters."""
    partial = [t for text in TEXTS for t in tok.encode(text) if "\ufffd" in tok.decode([t])]
    assert len(partial) >= 5


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("prompt", ["", "Prompt: ", "日本"])
def test_incremental_equals_full_decode(tok, text, prompt):
    ids = tok.encode(text)
    full = tok.decode(ids)
    assert full == text
    detok = IncrementalDetokenizer(tok, tok.encode(prompt))
    texts = feed(detok, ids)
    for t in texts:
        assert "\ufffd" not in t, "an incomplete character must be held back, not emitted"
        assert full.startswith(t)
    assert detok.text == full
    # After each token the text is the decode of the longest token prefix that does not end in
    # an incomplete character: held-back bytes appear as soon as their character is complete.
    for i in range(1, len(ids) + 1):
        j = max(j for j in range(i + 1) if not tok.decode(ids[:j]).endswith("\ufffd"))
        assert texts[i - 1] == tok.decode(ids[:j])


def test_special_tokens_skipped_or_kept(tok):
    ids = tok.encode("Hi") + [tok.convert_tokens_to_ids("<|im_end|>")] + tok.encode(" there")
    skip = IncrementalDetokenizer(tok, [], skip_special_tokens=True)
    feed(skip, ids)
    assert skip.text == "Hi there"
    keep = IncrementalDetokenizer(tok, [], skip_special_tokens=False)
    feed(keep, ids)
    assert keep.text == "Hi<|im_end|> there"


def _spanning(tok, text: str, stop: str) -> list[int]:
    """Token ids of ``text``; asserts that ``stop`` starts and ends inside different tokens."""
    ids = tok.encode(text)
    pieces = [tok.decode(ids[:i]) for i in range(len(ids) + 1)]
    start = text.index(stop)
    first = next(i for i, p in enumerate(pieces) if len(p.rstrip("\ufffd")) > start)
    last = next(i for i, p in enumerate(pieces) if len(p.rstrip("\ufffd")) >= start + len(stop))
    assert last > first, f"{stop!r} lies inside one token; the test needs one spanning a boundary"
    return ids


@pytest.mark.parametrize("stop", ["capital of F", "s the c", "日本語", "🙂🙂", "x 🙂"])
@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(tok, stop, include):
    text = {
        "capital of F": TEXTS[5], "s the c": TEXTS[5], "日本語": TEXTS[4], "🙂🙂": TEXTS[2], "x 🙂": TEXTS[4],
    }[stop]
    if stop == "x 🙂":
        text = "fox 🙂 fox"
    ids = _spanning(tok, text, stop)
    detok = IncrementalDetokenizer(tok, tok.encode("The prompt"), stop=[stop], include_stop_str_in_output=include)
    hit_at = None
    for i, t in enumerate(ids):
        if detok.add_token(t) is not None:
            hit_at = i
            break
    assert hit_at is not None
    # The stop is reported at the token that completes it, not before and not later.
    assert stop not in tok.decode(ids[:hit_at]) and stop in tok.decode(ids[: hit_at + 1])
    idx = text.index(stop)
    assert detok.text == (text[: idx + len(stop)] if include else text[:idx])


def test_first_stop_string_in_text_wins_and_prompt_does_not_count(tok):
    text = TEXTS[5]
    ids = tok.encode(text)
    # "capital" occurs in the prompt too; only output text counts.
    detok = IncrementalDetokenizer(tok, tok.encode("the capital"), stop=["Germany", "capital"])
    feed(detok, ids)
    assert detok.text == "Paris is the "


def test_stream_holdback(tok):
    text = TEXTS[5]
    ids = tok.encode(text)
    stop = "France."
    detok = IncrementalDetokenizer(tok, [], stop=[stop])
    streamed = ""
    hit = None
    for t in ids:
        hit = detok.add_token(t)
        if hit is not None:
            break
        streamed += detok.take_stream_delta(finished=False)
        assert detok.text.startswith(streamed)
        # Exactly the last len(stop) - 1 characters are held back while running.
        assert len(detok.text) - len(streamed) == min(len(detok.text), len(stop) - 1)
        assert not streamed.endswith("Fr")  # a possible beginning of the stop string is never streamed
    assert hit == stop
    streamed += detok.take_stream_delta(finished=True)
    assert streamed == detok.text == "Paris is the capital of "
    assert detok.take_stream_delta(finished=True) == ""


@pytest.mark.parametrize("kwargs", [dict(), dict(stop=["zzz"], include_stop_str_in_output=True)])
def test_stream_without_holdback(tok, kwargs):
    """No stop strings (or stop strings kept in the output): every delta is streamed at once."""
    ids = tok.encode(TEXTS[2])
    detok = IncrementalDetokenizer(tok, [], **kwargs)
    streamed = ""
    for t in ids:
        detok.add_token(t)
        streamed += detok.take_stream_delta(finished=False)
        assert streamed == detok.text
    assert streamed == TEXTS[2]


def test_stream_never_matching_stop_flushes_at_finish(tok):
    ids = tok.encode(TEXTS[1])
    detok = IncrementalDetokenizer(tok, [], stop=["nothing like this"])
    streamed = "".join(detok.take_stream_delta(False) for t in ids if detok.add_token(t) is None)
    assert len(streamed) < len(TEXTS[1])
    streamed += detok.take_stream_delta(finished=True)
    assert streamed == TEXTS[1]


def test_stop_strings_ignored_within_min_tokens(tok):
    text = TEXTS[5]
    ids = tok.encode(text)
    first_done = next(i for i in range(1, len(ids) + 1) if "capital" in tok.decode(ids[:i]))
    # The first "capital" is completed within min_tokens: only the second one stops.
    detok = IncrementalDetokenizer(tok, [], stop=["capital"], min_tokens=first_done)
    feed(detok, ids)
    assert detok.text == "Paris is the capital of France. Berlin is the "
    detok = IncrementalDetokenizer(tok, [], stop=["capital"], min_tokens=first_done - 1)
    feed(detok, ids)
    assert detok.text == "Paris is the "


def test_ids_decoder_is_the_tokenizers_decode(tok):
    """The direct Rust call (taken for this plain fast tokenizer) decodes exactly as ``tokenizer.decode``."""
    import random

    from pagoda.engine.detokenizer import _is_plain_fast_tokenizer, ids_decoder

    assert _is_plain_fast_tokenizer(type(tok))
    rng = random.Random(0)
    size = len(tok)
    for skip in (True, False):
        decode = ids_decoder(tok, skip)
        for _ in range(500):
            ids = [rng.randrange(size) for _ in range(rng.randrange(0, 9))]
            assert decode(ids) == tok.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
