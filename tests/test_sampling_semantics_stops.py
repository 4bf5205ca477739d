"""Stop strings in the incremental detokenizer against a reference built from full decodes (vLLM's rules).

The reference, token by token: the text so far is the full decode less a trailing partial character; once more
than ``min_tokens`` tokens are out, the first step whose new text completes a stop string (a match that ends in
the new characters) ends the output there, cut before the match (or after it with
``include_stop_str_in_output``); the match that ends first wins (at a tie, the first listed). Every text shown
while running is a prefix of the final text.
"""

from __future__ import annotations

import random

import pytest

from pagoda.engine.detokenizer import IncrementalDetokenizer

ALPHABET = list("abc xyz.,\n") + list("éü日本🙂—")


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.path("llama"))


def _clean(tok, ids: list[int]) -> str:
    j = max(j for j in range(len(ids) + 1) if not tok.decode(ids[:j]).endswith("\ufffd"))
    return tok.decode(ids[:j])


def _reference(tok, out: list[int], stops: list[str], include: bool, min_tokens: int) -> tuple[str, str | None]:
    prev = ""
    for j in range(1, len(out) + 1):
        text = _clean(tok, out[:j])
        if j > min_tokens:
            found = [(i, s) for s in stops if (i := text.find(s, max(0, len(prev) - len(s) + 1))) != -1]
            if found:
                i, s = min(found, key=lambda f: f[0] + len(f[1]))  # the one that ends first; at a tie, the first listed
                return (text[: i + len(s)] if include else text[:i]), s
        prev = text
    return _clean(tok, out), None


def test_stop_strings_match_the_reference(tok):
    rng = random.Random(1)
    hits = 0
    for _ in range(600):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(2, 30)))
        ids = tok.encode(text, add_special_tokens=False)
        k = rng.choice([k for k in range(len(ids)) if not tok.decode(ids[:k]).endswith("\ufffd")])
        prompt, out = ids[:k], ids[k:]
        out_text = tok.decode(out)
        stops = []
        for _ in range(rng.randrange(1, 3)):
            a = rng.randrange(len(out_text))
            stops.append(out_text[a:a + rng.randrange(1, 5)] if rng.random() < 0.8 else "zq" + rng.choice(ALPHABET))
        include, min_tokens = rng.random() < 0.5, rng.choice([0, 0, 2])
        detok = IncrementalDetokenizer(tok, prompt, stop=stops, include_stop_str_in_output=include,
                                       min_tokens=min_tokens)
        hit, shown = None, []
        for t in out:
            hit = detok.add_token(t)
            shown.append(detok.shown_text(hit is not None))
            if hit is not None:
                break
        want, want_hit = _reference(tok, out, stops, include, min_tokens)
        case = (text, k, stops, include, min_tokens)
        assert (detok.text, hit) == (want, want_hit), case
        assert all(want.startswith(s) for s in shown), case
        hits += want_hit is not None
    assert hits > 300  # control: most cases end on a stop string


def test_a_stop_string_completed_within_min_tokens_never_counts(tok):
    """Whatever the other stop strings: a longer one in the list does not widen where a short one is looked for."""
    text = "Paris is the capital of France. Berlin is the capital of Germany."
    ids = tok.encode(text)
    first_done = next(i for i in range(1, len(ids) + 1) if "capital" in tok.decode(ids[:i]))
    for stops in (["capital"], ["capital", "a much longer stop string that never appears"]):
        detok = IncrementalDetokenizer(tok, [], stop=stops, min_tokens=first_done)
        for t in ids:
            if detok.add_token(t) is not None:
                break
        assert detok.text == "Paris is the capital of France. Berlin is the ", stops
