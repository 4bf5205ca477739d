"""Beam search through the server (``use_beam_search`` with ``n`` beams, vLLM's extra fields):
the choices equal the offline ``LLM.beam_search`` result on the same model."""

from __future__ import annotations

import json
import math

import pytest
from server_utils import MODEL

PROMPT = "Paris is the capital of"


@pytest.fixture(scope="module")
def offline(tiny_model_dir):
    from pagoda import LLM

    return LLM(str(tiny_model_dir), kv_cache_memory_bytes=64 * 2**20)


def offline_beams(llm, prompt, n, max_tokens, **kw):
    from pagoda import BeamSearchParams

    ids = prompt if isinstance(prompt, list) else llm.get_tokenizer().encode(prompt)
    out = llm.beam_search([{"prompt_token_ids": ids}], BeamSearchParams(beam_width=n, max_tokens=max_tokens, **kw))[0]
    return [(s.tokens[len(ids):], s) for s in out.sequences]


def sse_events(resp) -> list:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in resp.iter_lines() if line.startswith("data: ")]


def test_completion_beam_search_matches_offline(server, offline):
    tok = offline.get_tokenizer()
    ref = offline_beams(offline, PROMPT, 2, 8)
    c = server.client()
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, n=2, logprobs=2,
                             extra_body={"use_beam_search": True, "length_penalty": 1.0})
    assert [ch.index for ch in r.choices] == [0, 1]
    for ch, (gen, seq) in zip(r.choices, ref, strict=True):
        assert ch.text == tok.decode(gen, skip_special_tokens=True)
        assert ch.finish_reason == seq.finish_reason == "length"
        assert len(ch.logprobs.tokens) == len(gen) == 8
        assert math.isclose(sum(ch.logprobs.token_logprobs), seq.cum_logprob, abs_tol=1e-3)
        assert all(len(top) >= 2 for top in ch.logprobs.top_logprobs)
    assert r.usage.completion_tokens == 16


def test_completion_beam_search_prompts_stream_and_penalty(server, offline):
    tok = offline.get_tokenizer()
    prompts = [PROMPT, "The quick brown fox"]
    refs = [offline_beams(offline, p, 2, 6, length_penalty=0.5) for p in prompts]
    want = [tok.decode(gen, skip_special_tokens=True) for ref in refs for gen, _ in ref]
    c = server.client()
    body = {"use_beam_search": True, "length_penalty": 0.5}
    r = c.completions.create(model=MODEL, prompt=prompts, max_tokens=6, n=2, extra_body=body)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert [ch.text for ch in r.choices] == want
    # stream=true: the finished beams arrive as SSE events (one burst at the end), then [DONE].
    resp = server.post("/v1/completions", {"model": MODEL, "prompt": prompts, "max_tokens": 6, "n": 2,
                                           "stream": True, **body})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    texts = {}
    for e in events[:-1]:
        for ch in e["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
            assert ch["finish_reason"] == "length"
    assert [texts[i] for i in range(4)] == want


def test_chat_beam_search_matches_offline(server, offline):
    from pagoda.engine.tokenizer import apply_chat_template

    tok = offline.get_tokenizer()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.encode(apply_chat_template(tok, messages, True), add_special_tokens=False)
    ref = offline_beams(offline, ids, 2, 6)
    c = server.client()
    r = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, n=2,
                                  extra_body={"use_beam_search": True})
    assert [ch.message.content for ch in r.choices] == [tok.decode(g, skip_special_tokens=True) for g, _ in ref]
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 12
    stream = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, n=2, stream=True,
                                       extra_body={"use_beam_search": True})
    got = ["", ""]
    finish = [None, None]
    for chunk in stream:
        for ch in chunk.choices:
            got[ch.index] += ch.delta.content or ""
            finish[ch.index] = ch.finish_reason or finish[ch.index]
    assert got == [ch.message.content for ch in r.choices]
    assert finish == ["length", "length"]


def test_beam_search_errors(server):
    base = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "use_beam_search": True}
    # --max-logprobs 5 on this server: 2 candidates per beam (x2 with EOS) allow 2 beams.
    r = server.post("/v1/completions", {**base, "n": 3})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "n" and "max_logprobs=5" in err["message"]
    r = server.post("/v1/completions", {**base, "stop": ["x"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = server.post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 4, "use_beam_search": True, "repetition_penalty": 1.2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "repetition_penalty"
    r = server.post("/v1/completions", {**base, "early_stopping": "sometimes"})
    assert r.status_code == 400
    r = server.post("/v1/completions", {**base, "max_tokens": 5000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    # the server still serves afterwards
    assert server.post("/v1/completions", {**base, "n": 2}).status_code == 200


def _close(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, abs_tol=1e-3))


def assert_same_logprobs(got: dict, want: dict) -> None:
    """Completions logprobs equal up to fp32 rounding (prefix caching and batch shape may differ)."""
    assert got["tokens"] == want["tokens"] and got["text_offset"] == want["text_offset"], (got, want)
    assert all(_close(a, b) for a, b in zip(got["token_logprobs"], want["token_logprobs"], strict=True)), (got, want)
    for a, b in zip(got["top_logprobs"], want["top_logprobs"], strict=True):
        assert (a is None) == (b is None), (got, want)
        if a is not None:
            assert list(a) == list(b) and all(_close(a[k], b[k]) for k in a), (a, b)


def test_completion_beam_search_echo_logprobs_cover_the_prompt(server):
    """echo + logprobs under beam search: the prompt part is the sampled path's (first token null, the text
    offsets from 0), then the generated tokens; one beam is greedy search, so the whole object equals greedy's."""
    base = {"model": MODEL, "prompt": PROMPT, "max_tokens": 3, "echo": True, "logprobs": 1, "ignore_eos": True}
    greedy = server.post("/v1/completions", {**base, "temperature": 0})
    beam = server.post("/v1/completions", {**base, "use_beam_search": True, "n": 1})
    assert greedy.status_code == beam.status_code == 200, (greedy.text, beam.text)
    g, b = greedy.json()["choices"][0], beam.json()["choices"][0]
    assert b["text"] == g["text"] and b["text"].startswith(PROMPT)
    lp = b["logprobs"]
    n_prompt = len(lp["tokens"]) - 3
    assert n_prompt > 0 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert "".join(lp["tokens"][:n_prompt]) == PROMPT and lp["text_offset"][n_prompt] == len(PROMPT)
    assert_same_logprobs(lp, g["logprobs"])
    # streamed, the beams arrive in one burst with the same logprobs
    events = sse_events(server.post("/v1/completions", {**base, "use_beam_search": True, "n": 1, "stream": True}))
    streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in events[:-1]:
        for ch in e["choices"]:
            for f in streamed:
                streamed[f] += (ch["logprobs"] or {}).get(f, [])
    assert_same_logprobs(streamed, g["logprobs"])


def test_beam_search_top_logprobs_start_with_the_chosen_token(server):
    """As for sampled tokens: the chosen token first in top_logprobs, then the others by rank (N + 1 at most)."""
    base = {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "use_beam_search": True, "n": 2, "ignore_eos": True}
    for num in (0, 2):
        r = server.post("/v1/completions", {**base, "logprobs": num})
        assert r.status_code == 200, r.text
        for ch in r.json()["choices"]:
            lp = ch["logprobs"]
            for tok, tlp, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
                assert next(iter(top)) == tok and math.isclose(top[tok], tlp), (tok, top)
                assert len(top) <= num + 1 and (num == 0) == (len(top) == 1), top
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    r = server.post("/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 6, "n": 2,
                                             "use_beam_search": True, "ignore_eos": True, "logprobs": True,
                                             "top_logprobs": 1})
    assert r.status_code == 200, r.text
    for ch in r.json()["choices"]:
        for t in ch["logprobs"]["content"]:
            assert [x["token"] for x in t["top_logprobs"]] == [t["token"]], t
    # One beam is greedy search: its logprobs are the greedy request's, top entries included.
    one = {**base, "n": 1, "logprobs": 2}
    g = server.post("/v1/completions", {**one, "use_beam_search": False, "temperature": 0}).json()["choices"][0]
    b = server.post("/v1/completions", one).json()["choices"][0]
    assert_same_logprobs(b["logprobs"], g["logprobs"])
