"""Scenario 8 (mixed load): the kinds of request real traffic mixes, fired at once at a server with its features on.

Two configurations: (1) prefix caching, chunked prefill under a 64-token batch budget, a KV cache small enough to
preempt, ``--max-num-seqs 8`` and the hermes tool parser; (2) n-gram speculation behind two API server processes.
Each valid request is first served alone, then again inside the mixed load (streamed and not): completions and
chat, ``n`` > 1, ``best_of`` = ``n``, ``logprobs`` / ``top_logprobs``, ``prompt_logprobs``, echo, structured outputs
(json_schema, regex, choice), a required tool call, ``stop`` strings, ``max_tokens`` 1, prompts at the context
length; mixed with requests refused with a 4xx, clients that leave mid-stream or before an answer, and
``/tokenize``, ``/metrics``, ``/health`` scrapes.

Checked: every valid request answers 200 with the same greedy (or seeded) choices as alone, streamed or not; a
stream is well-formed SSE (one id, nothing after a choice's finish, ``[DONE]`` last) and its text, finish
reasons and usage equal the non-streamed answer's; every refused request gets its status and an OpenAI error
body; the side routes answer 200 throughout; afterwards the engine is idle with every KV block free, and the
server is back to its baseline (health, canary, threads, files, memory).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from harness import MODEL, assert_recovered, async_client, engine_idle, record, take_baseline, wait_for

MAX_MODEL_LEN = 512
LONG = " ".join(["paged attention blocks"] * 400)  # far over the context: truncated to fit, or refused
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 6}},
          "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
    "additionalProperties": False}}}]
USAGE = {"include_usage": True}

GREEDY = {"model": MODEL, "temperature": 0}


def chat(content: str, **kw: Any) -> dict:
    return {**GREEDY, "messages": [{"role": "user", "content": content}], **kw}


def valid_requests() -> list[tuple[str, dict]]:
    """(path, body) of the valid requests: greedy, or seeded (``seeded`` in the body's prompt or message)."""
    cmp = "/v1/completions"
    chat_path = "/v1/chat/completions"
    out: list[tuple[str, dict]] = []
    for i in range(3):
        out.append((cmp, {**GREEDY, "prompt": f"The quick brown fox {i}", "max_tokens": 20, "ignore_eos": True}))
        out.append((chat_path, chat(f"Paris is {i}", max_tokens=16)))
    out += [
        (cmp, {**GREEDY, "prompt": ["Berlin is the", "Large language"], "n": 2, "max_tokens": 10,
               "ignore_eos": True, "logprobs": 2}),
        (cmp, {"model": MODEL, "prompt": "seeded: Berlin is", "n": 2, "best_of": 2, "temperature": 0.9, "seed": 7,
               "max_tokens": 12, "ignore_eos": True}),
        (cmp, {**GREEDY, "prompt": "Large language", "echo": True, "logprobs": 1, "max_tokens": 6}),
        (cmp, {**GREEDY, "prompt": "Large language models", "prompt_logprobs": 0, "max_tokens": 4}),
        (chat_path, chat("hi", logprobs=True, top_logprobs=3, max_tokens=8)),
        (chat_path, chat("json", max_tokens=30, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})),
        (cmp, {**GREEDY, "prompt": "regex", "max_tokens": 10, "structured_outputs": {"regex": "[a-c]{3}-[0-9]{2}"}}),
        (cmp, {**GREEDY, "prompt": "choice", "max_tokens": 10, "structured_outputs": {"choice": ["yes", "no"]}}),
        (chat_path, chat("weather?", tools=TOOLS, tool_choice="required", max_tokens=40)),
        (cmp, {**GREEDY, "prompt": "The quick brown fox", "stop": [" the", "o"], "max_tokens": 40,
               "ignore_eos": True}),
        (cmp, {**GREEDY, "prompt": "one", "max_tokens": 1}),
        (chat_path, chat("one", max_tokens=1)),
        (cmp, {**GREEDY, "prompt": LONG, "truncate_prompt_tokens": MAX_MODEL_LEN - 12, "max_tokens": 12,
               "ignore_eos": True}),
        (chat_path, chat("seeded chat", temperature=0.8, seed=3, max_tokens=16)),
    ]
    return out


def refused_requests() -> list[tuple[str, dict, bool, int, str | None]]:
    """(path, body, stream, status, the ``param`` the error names) of requests refused before any work."""
    cmp = "/v1/completions"
    return [
        (cmp, {**GREEDY, "prompt": LONG, "max_tokens": 10}, False, 400, None),
        (cmp, {**GREEDY, "prompt": "x", "max_tokens": MAX_MODEL_LEN + 10}, True, 400, "max_tokens"),
        (cmp, {**GREEDY, "prompt": "x", "temperature": -1}, True, 400, "temperature"),
        ("/v1/chat/completions", chat("x", logprobs=True, top_logprobs=50), True, 400, "top_logprobs"),
        ("/v1/embeddings", {"model": MODEL, "input": "hello"}, False, 400, None),
        (cmp, {"model": "no-such-model", "prompt": "x"}, False, 404, "model"),
        # vLLM: a stream's chunks carry no prompt logprobs, so asking for them there is a 400 (not dropped)
        (cmp, {**GREEDY, "prompt": "x", "max_tokens": 2, "prompt_logprobs": 1}, True, 400, "prompt_logprobs"),
        ("/v1/chat/completions", chat("x", max_tokens=2, prompt_logprobs=-1), True, 400, "prompt_logprobs"),
    ]


def _seeded(body: dict) -> bool:
    text = body.get("prompt") if "prompt" in body else body["messages"][0]["content"]
    return isinstance(text, str) and text.startswith("seeded")


def _choices(path: str, data: dict) -> list[tuple]:
    """A non-streamed answer's choices, as comparable tuples (index, text, finish, tool calls, logprob tokens)."""
    out = []
    for c in data["choices"]:
        if "message" in c:
            m = c["message"]
            calls = [(t["function"]["name"], t["function"]["arguments"]) for t in m.get("tool_calls") or []]
            lp = [t["token"] for t in (c.get("logprobs") or {}).get("content") or []]
            out.append((c["index"], m.get("content") or "", c["finish_reason"], calls, lp))
        else:
            lp = (c.get("logprobs") or {}).get("tokens") or []
            out.append((c["index"], c["text"], c["finish_reason"], [], lp))
    return sorted(out)


def _streamed_choices(path: str, events: list[dict]) -> tuple[list[tuple], dict | None]:
    """A stream's chunks folded into :func:`_choices`'s form, and its final usage; checks the chunks' shape."""
    assert len({e["id"] for e in events}) == 1, "a stream's chunks must share one id"
    acc: dict[int, dict] = {}
    usage = None
    for e in events:
        if not e["choices"]:
            assert usage is None and e["usage"] is not None, e
            usage = e["usage"]
            continue
        for c in e["choices"]:
            a = acc.setdefault(c["index"], {"text": "", "finish": None, "calls": {}, "lp": []})
            assert a["finish"] is None, f"a chunk after choice {c['index']} finished: {c}"
            if "delta" in c:
                d = c["delta"]
                a["text"] += d.get("content") or ""
                for t in d.get("tool_calls") or []:
                    call = a["calls"].setdefault(t["index"], ["", ""])
                    call[0] += (t.get("function") or {}).get("name") or ""
                    call[1] += (t.get("function") or {}).get("arguments") or ""
                a["lp"] += [t["token"] for t in (c.get("logprobs") or {}).get("content") or []]
            else:
                a["text"] += c["text"]
                a["lp"] += (c.get("logprobs") or {}).get("tokens") or []
            a["finish"] = c["finish_reason"]
    choices = [(i, a["text"], a["finish"], [tuple(a["calls"][k]) for k in sorted(a["calls"])], a["lp"])
               for i, a in acc.items()]
    return sorted(choices), usage


async def call(c: httpx.AsyncClient, srv, path: str, body: dict, stream: bool) -> tuple[int, Any]:
    """(status, JSON body) of a plain request; (status, the stream's chunks) of a streamed one (checked to be
    well-formed SSE ending in ``[DONE]``; an in-stream error event is returned as status 599)."""
    if not stream:
        r = await c.post(srv.url + path, json=body, headers=srv.headers)
        return r.status_code, r.json()
    async with c.stream("POST", srv.url + path, json={**body, "stream": True}, headers=srv.headers) as r:
        raw = await r.aread()
        if r.status_code != 200:
            return r.status_code, json.loads(raw)
    events = raw.decode().split("\n\n")
    assert events[-1] == "", raw[-200:]
    events = events[:-1]
    assert events and all(e.startswith("data: ") for e in events), raw[:300]
    assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1, raw[-300:]
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    errors = [ch for ch in chunks if "error" in ch]
    return (599, errors) if errors else (200, chunks)


async def leave_mid_stream(c: httpx.AsyncClient, srv, i: int) -> None:
    """A streamed chat the client leaves after a few chunks."""
    body = {**chat(f"leaving {i}", max_tokens=300, ignore_eos=True), "n": 1 + i % 2, "stream": True}
    async with c.stream("POST", srv.url + "/v1/chat/completions", json=body, headers=srv.headers) as r:
        assert r.status_code == 200
        n = 0
        async for _ in r.aiter_lines():
            n += 1
            if n > 2 + i:
                return


async def leave_before_answer(c: httpx.AsyncClient, srv, i: int) -> None:
    """A non-streamed completion the client gives up on (its engine request is aborted)."""
    body = {**GREEDY, "prompt": f"leaving {i}", "max_tokens": 300, "ignore_eos": True}
    try:
        await c.post(srv.url + "/v1/completions", json=body, headers=srv.headers, timeout=0.2 + 0.1 * i)
    except httpx.TimeoutException:
        pass


async def side_routes(c: httpx.AsyncClient, srv) -> list[int]:
    statuses = []
    for _ in range(4):
        statuses.append((await c.get(srv.url + "/metrics", headers=srv.headers)).status_code)
        statuses.append((await c.post(srv.url + "/tokenize", json={"model": MODEL, "prompt": "hello world"},
                                      headers=srv.headers)).status_code)
        statuses.append((await c.get(srv.url + "/health")).status_code)
        await asyncio.sleep(0.2)
    return statuses


CONFIGS = {
    "features": ["--enable-prefix-caching", "--enable-chunked-prefill", "--max-num-batched-tokens", "64",
                 "--num-gpu-blocks-override", "40", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
    "ngram_two_api_servers": ["--enable-chunked-prefill", "--max-num-batched-tokens", "64",
                              "--num-gpu-blocks-override", "40", "--api-server-count", "2",
                              "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}',
                              "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_mixed_load(make_server, config):
    srv = make_server("--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "8", *CONFIGS[config])
    valid = valid_requests()
    refused = refused_requests()
    speculative = "--speculative-config" in CONFIGS[config]

    async def serve_alone() -> list:
        async with async_client() as c:
            return [await call(c, srv, p, b, False) for p, b in valid]

    alone = asyncio.run(serve_alone())  # the reference, and the warm-up (a first grammar starts a pool thread)
    for (path, body), (status, data) in zip(valid, alone, strict=True):
        assert status == 200, (path, body, data)
    base = take_baseline(srv)

    async def main() -> list:
        async with async_client() as c:
            jobs = [call(c, srv, p, b, False) for p, b in valid]
            jobs += [call(c, srv, p, {**b, "stream_options": USAGE}, True) for p, b in valid]
            jobs += [call(c, srv, p, b, s) for p, b, s, _, _ in refused]
            jobs += [leave_mid_stream(c, srv, i) for i in range(4)]
            jobs += [leave_before_answer(c, srv, i) for i in range(3)]
            jobs += [side_routes(c, srv)]
            return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    n = len(valid)
    plain, streamed = results[:n], results[n:2 * n]
    rest = results[2 * n:]
    for i, (path, body) in enumerate(valid):
        ref = alone[i][1]
        # sampled outputs are the same distribution, not the same draws, under speculation (docs/cli.md)
        same_draws = not (speculative and _seeded(body))
        status, data = plain[i]
        assert status == 200, (path, body, data)
        if same_draws:
            assert _choices(path, data) == _choices(path, ref), f"request {i} under load differs from alone: {body}"
        assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
        status, chunks = streamed[i]
        assert status == 200, (path, body, chunks)
        choices, usage = _streamed_choices(path, chunks)
        assert usage is not None, f"request {i}: no usage chunk"
        assert usage["prompt_tokens"] == ref["usage"]["prompt_tokens"], (i, usage, ref["usage"])
        if same_draws:
            assert choices == _choices(path, ref), f"request {i} streamed under load differs from alone: {body}"
            assert usage == ref["usage"], (i, usage, ref["usage"])
    for (path, body, stream, want, param), (status, data) in zip(refused, rest, strict=False):
        assert status == want, (path, body, stream, status, data)
        assert set(data) == {"error"} and {"message", "type", "param", "code"} <= set(data["error"]), data
        if param is not None:
            assert data["error"]["param"] == param, data
    assert set(rest[-1]) == {200}, f"side routes answered {rest[-1]}"
    assert wait_for(lambda: engine_idle(srv) == (0, 0, 0), timeout=30), engine_idle(srv)
    figures = assert_recovered(srv, base)
    record(f"mixed_load_{config}", requests=len(results) + n, preemptions=srv.metric("pagoda:num_preemptions_total"),
           **figures)
