"""A streamed answer and the unstreamed answer to the same request agree (fuzzed over the sampling fields).

An unstreamed request asks the engine for its final output only (``output_kind`` FINAL_ONLY) while a stream builds
its answer from a cumulative output per step, so the two paths share the detokenizer and output processor but not
the serving code that turns outputs into choices. Each trial sends one seeded request both ways to a real server on
the tiny random model and compares, per choice: the text (the stream's deltas concatenated), the token ids, the
logprobs (tokens, values, top entries in order, text offsets), ``finish_reason`` and ``stop_reason``; and the usage
(the stream's final usage chunk, and its continuous usage per chunk). Stop strings and stop token ids are drawn from
what the request generates without them, so they are hit (stop strings spanning tokens among them).

The server runs with a 16-token step budget, so prompts longer than that are prefilled in chunks.

Logprob values are compared to 1e-4: the two requests (the children of ``n`` > 1 above all) may be scheduled in
differently shaped batches, which moves fp32 logprobs in their last bits; the tokens must be the same.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import uuid
from typing import Any

import httpx
import pytest
from server_utils import MODEL, RemoteServer, wait_for

from pagoda.engine.messages import EngineCoreOutput, PromptLogprobs
from pagoda.engine.output_processor import OutputProcessor
from pagoda.sampling_params import SamplingParams

TRIALS = 36  # per endpoint
BUDGET = 16  # --max-num-batched-tokens: longer prompts are prefilled in chunks
LONG_PROMPT = ("Paris is the capital of France. Berlin is the capital of Germany. The quick brown fox jumps over "
               "the lazy dog. Large language models generate text one token at a time.")


@pytest.fixture(scope="module")
def srv(tiny_model_dir):
    s = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                           "--max-num-seqs", "16", "--max-logprobs", "5",
                                           "--max-num-batched-tokens", str(BUDGET)])
    yield s
    s.stop()


# ------------------------------------------------------------------------------------------------ helpers
def _post(srv: RemoteServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=60)


def _sse(srv: RemoteServer, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", srv.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        lines = list(r.iter_lines())
    assert "data: [DONE]" in lines or path == "/v1/responses", lines[-3:]
    return [json.loads(ln[6:]) for ln in lines if ln.startswith("data: ") and ln != "data: [DONE]"]


def _diff(a: Any, b: Any, path: str = "", tol: float = 1e-4) -> list[tuple[str, Any, Any]]:
    """Where ``a`` and ``b`` differ (floats to ``tol``; the order of a top-logprobs dict counts, as vLLM's order of
    the chosen token first, then by rank, is part of the answer)."""
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=tol, abs_tol=tol) else [(path, a, b)]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b) or ("top_logprobs[" in path and list(a) != list(b)):
            return [(path + " keys", list(a), list(b))]
        return [d for k in a for d in _diff(a[k], b[k], f"{path}.{k}", tol)]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [(path + " len", a, b)]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, f"{path}[{i}]", tol)]
    return [] if a == b else [(path, a, b)]


def _choice_agg() -> dict[str, Any]:
    return {"text": "", "token_ids": None, "logprobs": None, "finish_reason": None, "stop_reason": None}


def _stream_completion(chunks: list[dict[str, Any]], prompt_lens: list[int], n: int,
                       continuous: bool) -> tuple[dict[int, Any], Any]:
    """The choices a completions stream adds up to, and its final usage; checks each chunk's continuous usage (the
    choice's tokens so far, its prompt's length) and that a choice finishes once."""
    choices: dict[int, Any] = {}
    usage = None
    tokens_so_far: dict[int, int] = {}
    for c in chunks:
        if not c["choices"]:
            usage = c["usage"]
            continue
        for x in c["choices"]:
            a = choices.setdefault(x["index"], _choice_agg())
            assert a["finish_reason"] is None, f"choice {x['index']} went on after its finish: {x}"
            a["text"] += x["text"]
            if x.get("token_ids") is not None:
                a["token_ids"] = (a["token_ids"] or []) + x["token_ids"]
            if x["logprobs"] is not None:
                lp = a["logprobs"] = a["logprobs"] or {k: [] for k in x["logprobs"]}
                for k, v in x["logprobs"].items():
                    lp[k] += v
                tokens_so_far[x["index"]] = len(lp["tokens"])
            a["finish_reason"], a["stop_reason"] = x["finish_reason"], x["stop_reason"]
        if continuous:
            (x,) = c["choices"]
            u = c["usage"]
            assert u["prompt_tokens"] == prompt_lens[x["index"] // n], (u, x)
            assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
            if choices[x["index"]]["token_ids"] is not None:
                assert u["completion_tokens"] == len(choices[x["index"]]["token_ids"]), (u, x)
        else:
            assert c["usage"] is None
    return choices, usage


def _full_completion(r: dict[str, Any]) -> dict[int, Any]:
    return {x["index"]: {"text": x["text"], "token_ids": x["token_ids"], "logprobs": x["logprobs"],
                         "finish_reason": x["finish_reason"], "stop_reason": x["stop_reason"]} for x in r["choices"]}


def _stream_chat(chunks: list[dict[str, Any]], prompt_len: int,
                 continuous: bool) -> tuple[dict[int, Any], Any, Any]:
    choices: dict[int, Any] = {}
    usage = prompt_ids = None
    for c in chunks:
        if c.get("prompt_token_ids") is not None:  # in a role chunk (vLLM: each choice's; pagoda: the first)
            assert prompt_ids in (None, c["prompt_token_ids"]), "two prompts' token ids"
            prompt_ids = c["prompt_token_ids"]
        if not c["choices"]:
            usage = c["usage"]
            continue
        for x in c["choices"]:
            a = choices.setdefault(x["index"], {**_choice_agg(), "role": None})
            assert a["finish_reason"] is None, f"choice {x['index']} went on after its finish: {x}"
            d = x["delta"]
            if "role" in d:
                a["role"] = d["role"]
            a["text"] += d.get("content") or ""
            if x.get("token_ids") is not None:
                a["token_ids"] = (a["token_ids"] or []) + x["token_ids"]
            if x["logprobs"] is not None:
                a["logprobs"] = (a["logprobs"] or []) + x["logprobs"]["content"]
            a["finish_reason"], a["stop_reason"] = x["finish_reason"], x["stop_reason"]
        if continuous:
            (x,) = c["choices"]
            u = c["usage"]
            assert u["prompt_tokens"] == prompt_len and u["total_tokens"] == prompt_len + u["completion_tokens"]
            if choices[x["index"]]["token_ids"] is not None:
                assert u["completion_tokens"] == len(choices[x["index"]]["token_ids"]), (u, x)
    return choices, usage, prompt_ids


def _full_chat(r: dict[str, Any]) -> dict[int, Any]:
    return {x["index"]: {"text": x["message"]["content"] or "", "token_ids": x.get("token_ids"),
                         "logprobs": x["logprobs"]["content"] if x["logprobs"] else None,
                         "finish_reason": x["finish_reason"], "stop_reason": x["stop_reason"],
                         "role": x["message"]["role"]} for x in r["choices"]}


def _substring(rng: random.Random, text: str) -> str:
    if not text:
        return "x"
    i = rng.randrange(len(text))
    return text[i:i + rng.randint(1, 5)]


CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "héllo wörld 🙂"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": LONG_PROMPT}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The sky"}],
]
TEXTS = ["The sky is", "héllo wörld", LONG_PROMPT, "🙂"]


def _request(kind: str, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A base request (no stop condition but its length) of endpoint ``kind``."""
    mt = rng.choice([1, 4, 12, 30])
    body: dict[str, Any] = {"model": MODEL, "temperature": rng.choice([0, 0, 1.0]), "seed": rng.randint(0, 99)}
    if kind == "completions":
        prompt: Any = rng.choice(TEXTS)
        if rng.random() < 0.25:  # several prompts in one request
            prompt = [prompt, rng.choice(TEXTS)]
        elif rng.random() < 0.15:
            prompt = [[5, 6, 7, 8], [40, 41]]
        body.update(prompt=prompt, max_tokens=mt)
        return "/v1/completions", body
    if kind == "chat":
        body["messages"] = rng.choice(CHATS)
        body["max_tokens" if rng.random() < 0.5 else "max_completion_tokens"] = mt
        return "/v1/chat/completions", body
    body.update(input=rng.choice(TEXTS[:3]), max_output_tokens=mt)
    return "/v1/responses", body


def _probe(srv: RemoteServer, kind: str, path: str, body: dict[str, Any]) -> tuple[str, list[int]]:
    """The base request's first text and token ids (where stops are drawn from)."""
    r = _post(srv, path, {**body, **({"return_token_ids": True} if kind != "responses" else {})})
    assert r.status_code == 200, r.text
    j = r.json()
    if kind == "completions":
        return j["choices"][0]["text"], j["choices"][0]["token_ids"]
    if kind == "chat":
        return j["choices"][0]["message"]["content"] or "", j["choices"][0]["token_ids"]
    return j["output"][0]["content"][0]["text"], []


def _fuzzed(kind: str, rng: random.Random, body: dict[str, Any], text: str, ids: list[int]) -> dict[str, Any]:
    """``body`` with fields drawn at random: stops from what it generated (``text``, ``ids``), and the rest."""
    body = dict(body)
    if rng.random() < 0.6:
        body["stop"] = [_substring(rng, text) for _ in range(rng.choice([1, 2]))]
    if rng.random() < 0.3:
        body["include_stop_str_in_output"] = True
    if rng.random() < 0.4:
        body["ignore_eos"] = True
    if rng.random() < 0.3:
        body["skip_special_tokens"] = False
    if kind == "responses":
        if rng.random() < 0.5:
            body["include"] = ["message.output_text.logprobs"]
            body["top_logprobs"] = rng.choice([0, 2])
        return body
    mt = body.get("max_tokens") or body["max_completion_tokens"]
    if rng.random() < 0.3 and ids:
        body["stop_token_ids"] = [rng.choice(ids)]
    if rng.random() < 0.3:
        body["min_tokens"] = min(mt, rng.choice([1, 3, 8]))
    if rng.random() < 0.4:
        body["n"] = rng.choice([2, 3])
    if rng.random() < 0.6:
        body["return_token_ids"] = True
    if rng.random() < 0.3:
        body["echo"] = True
    return _with_logprobs(kind, rng, body)


def _with_logprobs(kind: str, rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    if rng.random() < 0.5:
        if kind == "completions":
            body["logprobs"] = rng.choice([0, 2, 5])
        else:
            body["logprobs"] = True
            if rng.random() < 0.7:
                body["top_logprobs"] = rng.choice([0, 2, 5])
    return body


def _compare(srv: RemoteServer, kind: str, path: str, body: dict[str, Any],
             rng: random.Random) -> list[tuple[str, Any, Any]]:
    r = _post(srv, path, body)
    assert r.status_code == 200, (body, r.text)
    full = r.json()
    stream_body: dict[str, Any] = {**body, "stream": True}
    if kind == "responses":
        chunks = _sse(srv, path, stream_body)
        done = [c for c in chunks if c["type"] == "response.completed"]
        assert len(done) == 1, chunks[-1]
        streamed = done[0]["response"]
        deltas = "".join(c["delta"] for c in chunks if c["type"] == "response.output_text.delta")
        (text_done,) = [c["text"] for c in chunks if c["type"] == "response.output_text.done"]
        text = full["output"][0]["content"][0]["text"]
        return (_diff(full["output"][0]["content"], streamed["output"][0]["content"], "content")
                + _diff(full["usage"], streamed["usage"], "usage")
                + _diff([full["status"], full["incomplete_details"]],
                        [streamed["status"], streamed["incomplete_details"]], "status")
                + _diff([text, text], [deltas, text_done], "delta text"))
    continuous = rng.random() < 0.5
    stream_body["stream_options"] = {"include_usage": True, "continuous_usage_stats": continuous}
    chunks = _sse(srv, path, stream_body)
    if kind == "completions":
        prompt_lens = [len(p) for p in _prompt_ids(srv, body["prompt"])]
        choices, usage = _stream_completion(chunks, prompt_lens, body.get("n", 1), continuous)
        return _diff(_full_completion(full), choices, "choices") + _diff(full["usage"], usage, "usage")
    choices, usage, prompt_ids = _stream_chat(chunks, full["usage"]["prompt_tokens"], continuous)
    return (_diff(_full_chat(full), choices, "choices") + _diff(full["usage"], usage, "usage")
            + _diff(full.get("prompt_token_ids"), prompt_ids, "prompt_token_ids"))


def _prompt_ids(srv: RemoteServer, prompt: Any) -> list[list[int]]:
    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
    out = []
    for p in prompts:
        if isinstance(p, str):
            r = _post(srv, "/tokenize", {"model": MODEL, "prompt": p})
            assert r.status_code == 200, r.text
            out.append(r.json()["tokens"])
        else:
            out.append(p)
    return out


# ------------------------------------------------------------------------------------------------ the fuzz
@pytest.mark.parametrize("kind", ["completions", "chat", "responses"])
def test_streamed_and_unstreamed_answers_agree(srv, kind):
    rng = random.Random(f"stream-parity-{kind}")
    failures = []
    for _ in range(TRIALS):
        path, base = _request(kind, rng)
        text, ids = _probe(srv, kind, path, base)
        body = _fuzzed(kind, rng, base, text, ids)
        diffs = _compare(srv, kind, path, body, rng)
        if diffs:
            failures.append((json.dumps(body), diffs[:4]))
    assert not failures, "\n".join(f"{b}\n    {d}" for b, d in failures)


# ----------------------------------------------------------------- prompt logprobs of a prompt prefilled in chunks
def test_output_processor_shows_prompt_logprobs_whole_with_the_first_token():
    """A prefill chunk's prompt logprobs (no token yet) make no output: a cumulative output would show the prompt's
    later positions as None (vLLM's core sends them whole, with the first token). DELTA and FINAL_ONLY likewise."""
    from pagoda.sampling_params import RequestOutputKind

    def chunk(start: int, count: int) -> PromptLogprobs:
        return PromptLogprobs(start, [-1.0] * count, [1] * count, [[9]] * count, [[-1.0]] * count)

    for kind in (RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY):
        op = OutputProcessor(tokenizer=None)
        op.add_request("r", None, list(range(10, 19)),
                       SamplingParams(max_tokens=2, prompt_logprobs=1, detokenize=False, output_kind=kind))
        out, stop = op.process_one(EngineCoreOutput("r", [], prompt_logprobs=chunk(1, 4)))
        assert out is None and not stop
        out, _ = op.process_one(EngineCoreOutput("r", [7], prompt_logprobs=chunk(5, 4)))
        if kind is RequestOutputKind.FINAL_ONLY:
            assert out is None
            out, _ = op.process_one(EngineCoreOutput("r", [8], finish_reason="length"))
        assert out is not None and out.prompt_logprobs is not None
        assert out.prompt_logprobs[0] is None and all(d is not None for d in out.prompt_logprobs[1:]), kind


@pytest.mark.parametrize("n", [1, 2])
def test_streamed_echo_logprobs_of_a_chunked_prompt_match_unstreamed(srv, n):
    """echo with logprobs reports the prompt's logprobs. A prompt longer than the step budget is prefilled in
    chunks; the stream's echo chunk carried the logprobs of the first chunk only (null for the rest of the prompt),
    while the unstreamed answer (the final output) had them all. A fresh cache_salt each time: no prefix-cache hit
    lets the prompt skip its chunks."""
    body = {"model": MODEL, "prompt": " ".join([LONG_PROMPT] * 4), "max_tokens": 3, "echo": True, "logprobs": 2,
            "temperature": 0, "n": n, "return_token_ids": True}
    chunks = _sse(srv, "/v1/completions", {**body, "stream": True, "cache_salt": uuid.uuid4().hex})
    streamed, _ = _stream_completion(chunks, [], n, False)
    full = _post(srv, "/v1/completions", {**body, "cache_salt": uuid.uuid4().hex, "prompt_logprobs": 2}).json()
    num_prompt = full["usage"]["prompt_tokens"]
    assert num_prompt > 8 * BUDGET
    for i in range(n):
        lp = streamed[i]["logprobs"]
        assert lp["token_logprobs"][0] is None  # nothing predicts the first prompt token
        assert None not in lp["token_logprobs"][1:], lp["token_logprobs"]
        assert not _diff(full["choices"][i]["logprobs"], lp), _diff(full["choices"][i]["logprobs"], lp)[:4]
        # the echo's prompt part is the prompt_logprobs' chosen entries
        plp = full["choices"][i]["prompt_logprobs"]
        assert len(plp) == num_prompt
        chosen = [None] + [d[str(t)]["logprob"] for d, t in zip(plp[1:], full["choices"][i]["prompt_token_ids"][1:],
                                                              strict=True)]
        assert not _diff(chosen, lp["token_logprobs"][:num_prompt])


# ----------------------------------------------------------------- beam search and echo-only
@pytest.mark.parametrize("extra", [{}, {"logprobs": 2}, {"echo": True, "logprobs": 1}, {"max_tokens": 3}],
                         ids=["plain", "logprobs", "echo", "short"])
@pytest.mark.parametrize("n", [1, 2])
def test_beam_search_streamed_and_unstreamed_agree(srv, n, extra):
    body = {"model": MODEL, "prompt": "The sky is", "max_tokens": 8, "use_beam_search": True, "n": n,
            "ignore_eos": True, "return_token_ids": True, **extra}
    full = _post(srv, "/v1/completions", body)
    assert full.status_code == 200, full.text
    chunks = _sse(srv, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    choices, usage = _stream_completion(chunks, [], n, False)
    assert not _diff(_full_completion(full.json()), choices) and full.json()["usage"] == usage
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": extra.get("max_tokens", 8),
            "use_beam_search": True, "n": n, "ignore_eos": True, "return_token_ids": True,
            **({"logprobs": True, "top_logprobs": extra["logprobs"]} if "logprobs" in extra else {})}
    full = _post(srv, "/v1/chat/completions", chat)
    assert full.status_code == 200, full.text
    chunks = _sse(srv, "/v1/chat/completions", {**chat, "stream": True, "stream_options": {"include_usage": True}})
    choices, usage, prompt_ids = _stream_chat(chunks, 0, False)
    assert not _diff(_full_chat(full.json()), choices) and full.json()["usage"] == usage
    assert full.json()["prompt_token_ids"] == prompt_ids


@pytest.mark.parametrize("extra", [{}, {"logprobs": 2}, {"n": 2, "return_token_ids": True}])
def test_echo_only_streamed_and_unstreamed_agree(srv, extra):
    """echo with max_tokens 0 (scoring a text): the prompts alone, nothing generated shown or counted."""
    body = {"model": MODEL, "prompt": ["The sky is", "héllo"], "max_tokens": 0, "echo": True, **extra}
    full = _post(srv, "/v1/completions", body)
    assert full.status_code == 200, full.text
    chunks = _sse(srv, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    choices, usage = _stream_completion(chunks, [], extra.get("n", 1), False)
    assert not _diff(_full_completion(full.json()), choices)
    assert full.json()["usage"] == usage and usage["completion_tokens"] == 0
    assert [c["text"] for c in full.json()["choices"]] == [p for p in body["prompt"] for _ in range(extra.get("n", 1))]


# ----------------------------------------------------------------- a client that leaves an unstreamed request
def _generated(srv: RemoteServer) -> float:
    return sum(v for k, v in srv.metrics().items() if k.startswith("pagoda:generation_tokens_total"))


def _running(srv: RemoteServer) -> float:
    return sum(v for k, v in srv.metrics().items() if k.startswith("pagoda:num_requests_running"))


@pytest.mark.parametrize("path,body,samples", [
    ("/v1/completions", {"prompt": ["The sky is", "héllo"]}, 2),
    ("/v1/completions", {"prompt": "The sky is", "n": 2, "temperature": 1.0, "seed": 3}, 2),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 1),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 1900}, 1),
], ids=["two-prompts", "n2", "chat", "responses"])
def test_unstreamed_request_is_aborted_when_its_client_leaves(srv, path, body, samples):
    """The handler waits for the final output only; a client that hangs up mid-generation still aborts every
    engine request of it (each sample counted once as ``abort``) and the engine stops generating."""
    body = {"model": MODEL, "ignore_eos": True, **({"max_tokens": 1900} if path != "/v1/responses" else {}), **body}
    aborted = srv.metric("pagoda:request_success_total", finished_reason="abort")
    before = _generated(srv)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    try:
        assert wait_for(lambda: _running(srv) >= 1 and 0 < _generated(srv) - before < 600 * samples, timeout=60,
                        interval=0.001), "the request was never seen mid-generation"
    finally:
        conn.close()
    assert wait_for(lambda: srv.metric("pagoda:request_success_total", finished_reason="abort")
                    == aborted + samples, timeout=60)  # (deadlines only bound a hang)
    assert wait_for(lambda: _running(srv) == 0, timeout=60)
    stopped_at = _generated(srv)
    assert stopped_at - before < 1900 * samples
    assert not wait_for(lambda: _generated(srv) > stopped_at, timeout=0.5)  # and nothing more is generated
