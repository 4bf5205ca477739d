"""A streamed answer and the unstreamed answer to the same seeded request agree, fuzzed over tool calling, reasoning
and structured outputs (tests/server/test_stream_parity_fuzz.py covers the plain sampling fields).

The server runs the scripted thinking model (tests/reasoning_model.py: it thinks ``}{]`` between single-token
``<think>`` / ``</think>``, then is steered by whatever constrains it) behind ``--reasoning-parser qwen3
--enable-auto-tool-choice --tool-call-parser hermes``. Each trial draws one request:

* ``tool_choice`` ``none`` / ``auto`` / ``required`` / a named function (``parallel_tool_calls`` on or off); under
  ``auto`` a ``structured_outputs`` regex makes the answer hermes tool calls (one or two, text before and after,
  whitespace around the JSON), drawn at temperature 1 so the branches vary; or ``response_format`` json_schema /
  json_object, ``structured_outputs`` choice / regex / grammar without tools;
* the thinking: as scripted, closed by the template (``enable_thinking: false``: no reasoning, constrained from the
  first token), ended at once or made random by ``logit_bias``, dropped by ``include_reasoning: false``;
* the end: ``max_tokens`` from 1 up (cut in the thinking, in a call's name or arguments), stop strings and stop token
  ids drawn from the text the request generates without them (so they hit the thinking, a call's markup or JSON);
  ``n`` 2, logprobs, token ids, continuous usage, an answer continuing (and echoing) an assistant message.

Per choice the stream's deltas joined (``reasoning`` and ``reasoning_content``, ``content``, each call's ``id`` /
``name`` and its ``arguments`` concatenated by index, token ids, logprobs) must be the unstreamed message, and
``finish_reason``, ``stop_reason`` and ``usage`` (with ``completion_tokens_details.reasoning_tokens``) the same.
The Responses API is fuzzed likewise (its output items, streamed as events, against the unstreamed ones, with the
output text's logprobs), and so, without a server, is every tool and reasoning parser (the last section). vLLM's
documented rules are checked on both answers: ``tool_calls`` as the finish reason only with every call finished
(its arguments a JSON object), a named choice finishing ``stop``, a constrained call whole and valid when the model
stopped on its own, call ids ``chatcmpl-tool-<32 hex>``.

What the fuzz found (pinned below): a stop string inside a named / required call's arguments returned an empty
message unstreamed (no content, no call) while the stream had sent the call so far; a named call was streamed while
the model was still thinking, so an output that ended in the thinking had a call streamed and none unstreamed; an
``auto`` call cut at ``max_tokens`` after its name, before its arguments, was a call unstreamed and nothing at all
streamed; the Responses API put the message before the calls unstreamed where the stream (all of its text after
the calls) had opened it after them; and, against docs/serving.md's word on malformed output, a fault inside a
call's JSON made the stream send the whole raw text as content after the call's deltas and finish ``tool_calls``
with the call half sent.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import httpx
import pytest
from reasoning_model import build_thinking_model
from server_utils import MODEL, RemoteServer

TRIALS = 60  # chat
RESPONSES_TRIALS = 24
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer",
                                                                                       "minimum": 1, "maximum": 9}},
        "required": ["city"], "additionalProperties": False}
WHERE = {"type": "function", "function": {"name": "where", "parameters": CITY}}
NOW = {"type": "function", "function": {"name": "now", "description": "The time"}}
TOOLS = [WHERE, NOW]
SCHEMAS = {"where": CITY, "now": {"type": "object", "properties": {}, "additionalProperties": False}}
CALL_ID = re.compile(r"chatcmpl-tool-[0-9a-f]{32}")
# hermes calls as a template writes them: text around, whitespace around the JSON, one or two calls
_CALL = (r'<tool_call>\n?\{"name": "where", "arguments": \{"city": "(Paris|Rome)"(, "days": [1-9])?\}\}\n?</tool_call>'
         r'|<tool_call>\{"name": "now", "arguments": \{\}\}</tool_call>')
HERMES = rf"(Sure\. |Let me check\.\n)?({_CALL})(\n?({_CALL}))?( Done\.)?"
STRUCTURED = [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}}},
    {"response_format": {"type": "json_object"}},
    {"structured_outputs": {"choice": ["yes", "no", "<tool_call>"]}},
    {"structured_outputs": {"regex": r"[a-c]{1,4}( [0-9]{1,3})?"}},
    {"structured_outputs": {"grammar": 'root ::= "x" root | "y"'}},
]
CHATS = [
    [{"role": "user", "content": "Where?"}],
    [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris and the time?"}],
    [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "<think>Hm"}],  # continued, echoed
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    path = build_thinking_model(tmp_path_factory.mktemp("thinking") / "model")
    s = RemoteServer(str(path), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "32M",
                                 "--max-num-seqs", "8", "--max-logprobs", "3", "--reasoning-parser", "qwen3",
                                 "--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ids(srv) -> dict[str, int]:
    out = {}
    for t in ("<think>", "</think>", "}", "{", "]", "<|im_end|>"):
        r = httpx.post(srv.url + "/tokenize", json={"model": MODEL, "prompt": t, "add_special_tokens": False})
        (out[t],) = r.json()["tokens"]
    return out


# ------------------------------------------------------------------------------------------------ requests
def _post(srv: RemoteServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(srv.url + path, json=body, timeout=60)
    assert r.status_code == 200, (body, r.text)
    return r.json()


def _sse(srv: RemoteServer, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", srv.url + path, json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        lines = list(r.iter_lines())
    return [json.loads(ln[6:]) for ln in lines if ln.startswith("data: {")]


def _substring(rng: random.Random, text: str) -> str | None:
    if not text:
        return None
    i = rng.randrange(len(text))
    return text[i:i + rng.randint(1, 4)]


def _thinking(rng: random.Random, ids: dict[str, int], body: dict[str, Any]) -> None:
    """How the model thinks: as scripted, not at all (the template closed it), ended at once, or at random."""
    k = rng.random()
    if k < 0.2:
        body["chat_template_kwargs"] = {"enable_thinking": False}
    elif k < 0.3:
        body["logit_bias"] = {str(ids["</think>"]): 40}  # <think></think>: empty reasoning
    elif k < 0.4:
        body["logit_bias"] = {str(ids["}"]): -100}  # the script broken: random tokens, <think> among them
    elif k < 0.5:  # EOS in the thinking, after a few tokens of it
        body.update(logit_bias={str(ids["<|im_end|>"]): 40}, min_tokens=rng.randint(1, 4))
    if rng.random() < 0.1:
        body["include_reasoning"] = False


def _chat_request(rng: random.Random, ids: dict[str, int]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": rng.choice(CHATS), "seed": rng.randint(0, 999),
                            "temperature": rng.choice([0, 1.0, 1.0]), "max_tokens": rng.choice([100, 250])}
    if body["messages"][-1]["role"] == "assistant":
        body.update(add_generation_prompt=False, continue_final_message=True, echo=rng.random() < 0.7)
    kind = rng.choice(["auto-forced", "auto-forced", "required", "named", "named", "structured", "none", "auto"])
    if kind == "auto-forced":
        body.update(tools=TOOLS, structured_outputs={"regex": HERMES})
    elif kind == "required":
        body.update(tools=TOOLS, tool_choice="required")
    elif kind == "named":
        body.update(tools=TOOLS, tool_choice={"type": "function", "function": {"name": rng.choice(["where", "now"])}})
    elif kind == "structured":
        body.update(rng.choice(STRUCTURED))
    elif kind == "none":
        body.update(tools=TOOLS, tool_choice="none")
    else:
        body["tools"] = TOOLS
    if "tools" in body and rng.random() < 0.3:
        body["parallel_tool_calls"] = False
    _thinking(rng, ids, body)
    return body


def _fuzzed(rng: random.Random, body: dict[str, Any], raw: str, token_ids: list[int]) -> dict[str, Any]:
    """``body`` with its end drawn from what it generated (``raw``: the output's text, tags and markup included)."""
    body = dict(body)
    k = rng.random()
    if k < 0.35:
        body["max_tokens"] = rng.randint(1, max(1, len(token_ids)))
        if "min_tokens" in body:
            body["min_tokens"] = min(body["min_tokens"], body["max_tokens"])
    elif k < 0.75:
        stops = [s for s in (_substring(rng, raw) for _ in range(rng.choice([1, 2]))) if s]
        if stops:
            body["stop"] = stops
    elif k < 0.85 and token_ids:
        body["stop_token_ids"] = [rng.choice(token_ids)]
    if rng.random() < 0.2:
        body["include_stop_str_in_output"] = True
    if rng.random() < 0.25:
        body["n"] = 2
    if rng.random() < 0.5:
        body["return_token_ids"] = True
    if rng.random() < 0.3:
        body.update(logprobs=True, top_logprobs=rng.choice([0, 2]))
    return body


# ------------------------------------------------------------------------------------------------ chat answers
def _full_chat(r: dict[str, Any]) -> dict[int, dict[str, Any]]:
    out = {}
    for c in r["choices"]:
        m = c["message"]
        assert m.get("reasoning_content") == m.get("reasoning"), m
        for t in m.get("tool_calls") or []:
            assert CALL_ID.fullmatch(t["id"]) and t["type"] == "function", t
        out[c["index"]] = {
            "reasoning": m.get("reasoning") or "", "content": m["content"] or "",
            "calls": [(t["function"]["name"], t["function"]["arguments"]) for t in m.get("tool_calls") or []],
            "finish_reason": c["finish_reason"], "stop_reason": c["stop_reason"], "token_ids": c.get("token_ids"),
            "logprobs": c["logprobs"]["content"] if c["logprobs"] else None}
    return out


def _stream_chat(chunks: list[dict[str, Any]], continuous: bool) -> tuple[dict[int, dict[str, Any]], Any]:
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, list[str]]] = {}
    usage = None
    for ch in chunks:
        if not ch["choices"]:
            usage = ch["usage"]
            continue
        if continuous:
            u = ch["usage"]
            assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
        for x in ch["choices"]:
            a = choices.setdefault(x["index"], {"reasoning": "", "content": "", "calls": [], "finish_reason": None,
                                                "stop_reason": None, "token_ids": None, "logprobs": None})
            assert a["finish_reason"] is None, f"choice {x['index']} went on after its finish: {x}"
            d = x["delta"]
            assert d.get("reasoning_content") == d.get("reasoning"), d
            a["reasoning"] += d.get("reasoning") or ""
            a["content"] += d.get("content") or ""
            for t in d.get("tool_calls") or []:
                mine = calls.setdefault(x["index"], {})
                if "id" in t:
                    assert t["index"] not in mine and CALL_ID.fullmatch(t["id"]) and t["type"] == "function", t
                    mine[t["index"]] = [t["function"]["name"], ""]
                mine[t["index"]][1] += t["function"].get("arguments") or ""
            if x.get("token_ids") is not None:
                a["token_ids"] = (a["token_ids"] or []) + x["token_ids"]
            if x["logprobs"] is not None:
                a["logprobs"] = (a["logprobs"] or []) + x["logprobs"]["content"]
            a["finish_reason"], a["stop_reason"] = x["finish_reason"], x["stop_reason"]
    for i, mine in calls.items():
        choices[i]["calls"] = [tuple(mine[k]) for k in sorted(mine)]
    return choices, usage


def _vllm_rules(body: dict[str, Any], choice: dict[str, Any]) -> list[str]:
    """vLLM's documented rules an answer must keep (streamed or not)."""
    bad = []
    reason, calls = choice["finish_reason"], choice["calls"]
    if reason == "tool_calls":
        if not calls or any(not isinstance(_loads(a), dict) for _, a in calls):
            bad.append(f"finish_reason tool_calls with unfinished calls {calls}")
    named = isinstance(body.get("tool_choice"), dict)
    if named and reason == "tool_calls":
        bad.append("a named tool choice finishes 'stop', not 'tool_calls'")
    if body.get("tool_choice") == "required" and reason == "stop" and choice["stop_reason"] is None and calls:
        bad.append("required tool calls that ended on their own finish 'tool_calls'")
    if (named or body.get("tool_choice") == "required") and reason in ("stop", "tool_calls") \
            and choice["stop_reason"] is None:
        for name, args in calls:  # the grammar held the call: whole and valid
            value = _loads(args)
            if not isinstance(value, dict) or (name == "where" and value.get("city") not in ("Paris", "Rome")):
                bad.append(f"a constrained call that ended on its own is not valid: {name} {args}")
    if named and calls and {n for n, _ in calls} != {body["tool_choice"]["function"]["name"]}:
        bad.append(f"a named tool choice called {calls}")
    if body.get("parallel_tool_calls") is False and len(calls) > 1:
        bad.append(f"parallel_tool_calls false with {len(calls)} calls")
    if body.get("include_reasoning") is False and choice["reasoning"]:
        bad.append("include_reasoning false with reasoning")
    return bad


def _loads(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return None


def _compare_chat(srv: RemoteServer, rng: random.Random, body: dict[str, Any]) -> list[str]:
    full = _post(srv, "/v1/chat/completions", body)
    continuous = rng.random() < 0.5
    chunks = _sse(srv, "/v1/chat/completions",
                  {**body, "stream_options": {"include_usage": True, "continuous_usage_stats": continuous}})
    streamed, usage = _stream_chat(chunks, continuous)
    want = _full_chat(full)
    diffs = []
    for i in sorted(set(want) | set(streamed)):
        a, b = want.get(i), streamed.get(i)
        if a is None or b is None:
            diffs.append(f"choice {i}: only {'streamed' if a is None else 'unstreamed'}")
            continue
        for k in a:
            if k == "logprobs" and a[k] is not None and b[k] is not None:
                same = [(t["token"], t["bytes"], [x["token"] for x in t["top_logprobs"]]) for t in a[k]] == \
                       [(t["token"], t["bytes"], [x["token"] for x in t["top_logprobs"]]) for t in b[k]]
            else:
                same = a[k] == b[k]
            if not same:
                diffs.append(f"choice {i} {k}: unstreamed {a[k]!r} streamed {b[k]!r}")
        diffs += [f"choice {i} unstreamed: {x}" for x in _vllm_rules(body, a)]
        diffs += [f"choice {i} streamed: {x}" for x in _vllm_rules(body, b)]
    if full["usage"] != usage:
        diffs.append(f"usage: unstreamed {full['usage']} streamed {usage}")
    details = (full["usage"].get("completion_tokens_details") or {}).get("reasoning_tokens")
    if details is not None and not 0 <= details <= full["usage"]["completion_tokens"]:
        diffs.append(f"reasoning_tokens {details} of {full['usage']['completion_tokens']}")
    return diffs


def _raw(srv: RemoteServer, token_ids: list[int]) -> str:
    return _post(srv, "/detokenize", {"model": MODEL, "tokens": token_ids})["prompt"]


def test_chat_streamed_and_unstreamed_answers_agree(srv, ids):
    rng = random.Random("stream-parity-tools-chat")
    failures = []
    for _ in range(TRIALS):
        base = _chat_request(rng, ids)
        probe = _post(srv, "/v1/chat/completions", {**base, "return_token_ids": True})
        token_ids = probe["choices"][0]["token_ids"]
        body = _fuzzed(rng, base, _raw(srv, token_ids), token_ids)
        diffs = _compare_chat(srv, rng, body)
        if diffs:
            failures.append(f"{json.dumps(body)}\n    " + "\n    ".join(diffs[:4]))
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------------ responses
FLAT = [{"type": "function", **t["function"]} for t in TOOLS]


def _responses_request(rng: random.Random, ids: dict[str, int]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "input": rng.choice(["Where?", "Weather in Paris?"]),
                            "seed": rng.randint(0, 999), "temperature": rng.choice([0, 1.0]),
                            "max_output_tokens": 60}
    kind = rng.choice(["required", "named", "auto", "none", "text", "plain"])
    if kind == "required":
        body.update(tools=FLAT, tool_choice="required")
    elif kind == "named":
        body.update(tools=FLAT, tool_choice={"type": "function", "name": rng.choice(["where", "now"])})
    elif kind in ("auto", "none"):
        body.update(tools=FLAT, tool_choice=kind)
    elif kind == "text":
        body["text"] = {"format": {"type": "json_schema", "name": "c", "schema": CITY}}
    if "tools" in body and rng.random() < 0.3:
        body["parallel_tool_calls"] = False
    if body.get("tool_choice") in (None, "none") and rng.random() < 0.5:  # logprobs: not beside a tool parser
        body.update(include=["message.output_text.logprobs"], top_logprobs=rng.choice([0, 2]))
    k = rng.random()
    if k < 0.15:
        body["logit_bias"] = {str(ids["</think>"]): 40}
    elif k < 0.3:
        body["logit_bias"] = {str(ids["}"]): -100}
    return body


def _items(output: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for o in output:
        if o["type"] == "reasoning":
            out.append(("reasoning", o["status"], [c["text"] for c in o["content"]]))
        elif o["type"] == "message":
            out.append(("message", o["status"], [c["text"] for c in o["content"]],
                        [[(t["token"], [x["token"] for x in t["top_logprobs"]]) for t in c["logprobs"]]
                         for c in o["content"]]))
        else:
            assert o["type"] == "function_call" and CALL_ID.fullmatch(o["call_id"]), o
            out.append(("function_call", o["status"], o["name"], o["arguments"]))
    return out


def _streamed_items(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The output items as the events built them (added, deltas, done), checked against the events' own ends."""
    items: dict[int, dict[str, Any]] = {}
    for e in events:
        if e["type"] == "response.output_item.added":
            assert e["output_index"] == len(items), e
            items[e["output_index"]] = {"type": e["item"]["type"], "text": "", "item": e["item"], "logprobs": []}
        elif e["type"] in ("response.output_text.delta", "response.reasoning_text.delta",
                           "response.function_call_arguments.delta"):
            items[e["output_index"]]["text"] += e["delta"]
            items[e["output_index"]]["logprobs"] += e.get("logprobs") or []
        elif e["type"] == "response.output_item.done":
            items[e["output_index"]]["done"] = e["item"]
    out: list[tuple[Any, ...]] = []
    for i in sorted(items):
        it, done = items[i], items[i]["done"]
        if it["type"] == "function_call":
            assert done["arguments"] == it["text"], (done, it["text"])
            out.append(("function_call", done["status"], done["name"], it["text"]))
        elif it["type"] == "message":
            assert [c["text"] for c in done["content"]] == [it["text"]], (done, it["text"])
            out.append(("message", done["status"], [it["text"]],
                        [[(t["token"], [x["token"] for x in t["top_logprobs"]]) for t in it["logprobs"]]]))
        else:
            assert [c["text"] for c in done["content"]] == [it["text"]], (done, it["text"])
            out.append((it["type"], done["status"], [it["text"]]))
    return out


def test_responses_streamed_and_unstreamed_answers_agree(srv, ids):
    rng = random.Random("stream-parity-tools-responses")
    failures = []
    for _ in range(RESPONSES_TRIALS):
        base = _responses_request(rng, ids)
        probe = _post(srv, "/v1/responses", base)
        k = rng.random()
        body = dict(base)
        if k < 0.4:
            body["max_output_tokens"] = rng.randint(1, max(1, probe["usage"]["output_tokens"]))
        elif k < 0.8:
            text = "".join(o.get("arguments") or "".join(c["text"] for c in o.get("content") or [])
                           for o in probe["output"])
            stop = _substring(rng, text)
            if stop:
                body["stop"] = [stop]
        full = _post(srv, "/v1/responses", body)
        events = _sse(srv, "/v1/responses", body)
        assert events[-1]["type"] == "response.completed", events[-1]
        streamed = events[-1]["response"]
        diffs = []
        a, b, c = _items(full["output"]), _items(streamed["output"]), _streamed_items(events)
        if a != b or b != c:
            diffs.append(f"output: unstreamed {a} streamed {b} (events: {c})")
        for k2 in ("status", "incomplete_details", "usage"):
            if full[k2] != streamed[k2]:
                diffs.append(f"{k2}: unstreamed {full[k2]} streamed {streamed[k2]}")
        if diffs:
            failures.append(f"{json.dumps(body)}\n    " + "\n    ".join(diffs[:4]))
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------------ pinned cases
NAMED = {"type": "function", "function": {"name": "where"}}


@pytest.mark.parametrize("tool_choice", [NAMED, "required"], ids=["named", "required"])
def test_a_call_cut_by_a_stop_string_streams_as_returned(srv, tool_choice):
    """A stop string inside the arguments: the call so far, as a cut at ``max_tokens`` gives it (unstreamed, the
    answer was empty: no content, no call; the stream had sent the call)."""
    body = {"model": MODEL, "messages": CHATS[0], "max_tokens": 60, "temperature": 0, "tools": [WHERE],
            "tool_choice": tool_choice, "stop": ["Paris", "Rome"], "parallel_tool_calls": False}
    full = _full_chat(_post(srv, "/v1/chat/completions", body))[0]
    streamed, _ = _stream_chat(_sse(srv, "/v1/chat/completions", body), False)
    assert full["finish_reason"] == "stop" and full["stop_reason"] in ("Paris", "Rome")
    assert full["calls"] == [("where", '{"city": "')] and full["content"] == "", full
    assert streamed[0] == full


def test_a_named_choice_that_ends_in_the_thinking_calls_nothing_streamed_or_not(srv, ids):
    """EOS while thinking (a long thinking, never closed: ``</think>`` banned, EOS favoured after ``min_tokens``): no
    answer, so no call (the stream sent the named call as the thinking began)."""
    body = {"model": MODEL, "messages": CHATS[0], "max_tokens": 60, "temperature": 0, "tools": [WHERE],
            "tool_choice": NAMED, "min_tokens": 40, "logit_bias": {str(ids["<|im_end|>"]): 40,
                                                                   str(ids["</think>"]): -100}}
    full = _full_chat(_post(srv, "/v1/chat/completions", body))[0]
    chunks = _sse(srv, "/v1/chat/completions", body)
    streamed, _ = _stream_chat(chunks, False)
    assert (full["finish_reason"], full["stop_reason"], full["content"], full["calls"]) == ("stop", None, "", [])
    assert len(full["reasoning"]) > 20 and len(chunks) > 3  # thought in several chunks
    assert streamed[0] == full


def test_an_auto_call_cut_before_its_arguments_streams_as_returned(srv):
    """Cut after ``"arguments"``, before its value: the call with empty arguments, streamed and not (the stream sent
    nothing at all: the text was held as a possible call, and the call waited for its arguments)."""
    regex = r'<tool_call>\{"name": "where", "arguments": \{"city": "Paris"\}\}</tool_call>'
    body = {"model": MODEL, "messages": CHATS[0], "temperature": 0, "tools": [WHERE],
            "structured_outputs": {"regex": regex}, "return_token_ids": True}
    whole = _post(srv, "/v1/chat/completions", {**body, "max_tokens": 200})["choices"][0]
    ends = [k for k in range(1, len(whole["token_ids"]))
            if _raw(srv, whole["token_ids"][:k]).endswith(('"arguments"', '"arguments":', '"arguments": '))]
    assert ends, _raw(srv, whole["token_ids"])
    for max_tokens in ends:
        cut = {**body, "max_tokens": max_tokens}
        full = _full_chat(_post(srv, "/v1/chat/completions", cut))[0]
        streamed, _ = _stream_chat(_sse(srv, "/v1/chat/completions", cut), False)
        assert (full["finish_reason"], full["content"], full["calls"]) == ("length", "", [("where", "")])
        assert streamed[0] == full


# ------------------------------------------------------------------------------------------------ every parser
# The server above runs one tool parser (hermes) and one reasoning parser; the streams of all of them are the parsers'
# deltas over the text so far (ChatOutputParser.delta, ResponsesItemStream.feed), so these fuzz that layer directly:
# outputs of each format (text around the calls, odd JSON layouts, escapes, unicode), behind a reasoning split or not,
# cut at max_tokens or by a stop string anywhere, fed in chunks of 1-8 characters as a detokenizer hands them out.
PARSERS = ["hermes", "llama3_json", "mistral", "pythonic", "required", "named", None]


def _rand_str(rng: random.Random) -> str:
    return "".join(rng.choice(['a', 'b', ' ', 'é', '"', '\\', '\n', '{', '}', '[', ']', ',', ':', '🙂', '<', '>'])
                   for _ in range(rng.randint(0, 6)))


def _rand_value(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randint(0, 5 if depth < 2 else 3)
    if k == 0:
        return rng.choice([0, -7, 4096, 1.5, -0.25, 1e-3, True, False, None])
    if k <= 2:
        return _rand_str(rng)
    if k == 3:
        return rng.choice(["x", "Paris"])
    if k == 4:
        return [_rand_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return _rand_args(rng, depth + 1)


def _rand_args(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    return {rng.choice(["city", "n", "k_1", _rand_str(rng) or "k"]): _rand_value(rng, depth)
            for _ in range(rng.randint(0, 3))}


def _dumps(rng: random.Random, value: Any) -> str:
    seps = rng.choice([(", ", ": "), (",", ":"), (" , ", " :  ")])
    return json.dumps(value, separators=seps, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, None, 1]))


def _python(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_python(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_python(v) for v in value) + "]"
    return repr(value)


def _tool_output(rng: random.Random, fmt: str | None) -> str:
    """A well-formed output of the format ``fmt`` (None: plain text)."""
    text = lambda: rng.choice(["", "", "Sure.", "Let me check.\n", "ok 🙂 ", "a<b", "x {y}"])  # noqa: E731
    calls = [(rng.choice(["where", "now", "f"]), _rand_args(rng)) for _ in range(rng.choice([1, 1, 2, 3]))]
    if fmt == "hermes":
        return text() + "".join("<tool_call>" + rng.choice(["", "\n"]) + _dumps(rng, {"name": n, "arguments": a})
                                + rng.choice(["", "\n"]) + "</tool_call>" + rng.choice(["", "\n"])
                                for n, a in calls) + text()
    if fmt == "llama3_json":
        key = rng.choice(["parameters", "arguments"])
        return rng.choice(["", "<|python_tag|>", " "]) + rng.choice([";", "; "]).join(
            _dumps(rng, {"name": n, key: a}) for n, a in calls)
    if fmt == "mistral":
        if rng.random() < 0.5:
            return text() + "[TOOL_CALLS]" + _dumps(rng, [{"name": n, "arguments": a} for n, a in calls])
        return text() + "".join(f"[TOOL_CALLS]{n}{rng.choice(['[ARGS]', ''])}{_dumps(rng, a)}" for n, a in calls)
    if fmt == "pythonic":
        return "[" + ", ".join(f"{n}(" + ", ".join(f"{k}={_python(v)}" for k, v in a.items()
                                                   if k.isidentifier() and k.isascii()) + ")" for n, a in calls) + "]"
    if fmt == "required":
        return _dumps(rng, [{"name": n, "parameters": a} for n, a in calls])
    if fmt == "named":
        return _dumps(rng, calls[0][1])
    return text() + _rand_str(rng)


def _with_thinking(rng: random.Random, text: str, reasoning: str | None, closed: bool) -> str:
    """``text`` after a thought: opened by the output, or by the prompt (not where the template ``closed`` it)."""
    if reasoning is None:
        return text
    thought = _rand_str(rng).replace("<", "")
    return rng.choice([rng.choice(["", "\n"]) + f"<think>{thought}</think>" + rng.choice(["", "\n\n"]) + text,
                       text if closed else f"{thought}</think>{text}", text])


def _chat_parser(fmt: str | None, reasoning: str | None, template_kwargs: Any, max_calls: int | None):
    from pagoda.entrypoints.openai.chat_output import ChatOutputParser
    from pagoda.entrypoints.openai.tool_parsers import get_tool_parser
    from pagoda.entrypoints.openai.tool_parsers.constrained import NamedToolParser, RequiredToolParser
    from pagoda.reasoning import get_reasoning_parser

    tools = {"required": RequiredToolParser, "named": lambda: NamedToolParser("where"), None: lambda: None}.get(
        fmt, lambda: get_tool_parser(fmt))()  # type: ignore[arg-type]
    return ChatOutputParser(get_reasoning_parser(reasoning, template_kwargs) if reasoning else None, tools, True,
                            max_calls)


def _pieces(rng: random.Random, text: str) -> list[str]:
    out = []
    while text:
        k = rng.choice([1, 1, 2, 3, 5, 8])
        out.append(text[:k])
        text = text[k:]
    return out or [""]


def _draw_output(rng: random.Random, formats: list[str | None]) -> tuple[Any, ...]:
    fmt = rng.choice(formats)
    reasoning = rng.choice([None, "qwen3", "deepseek_r1"])
    kwargs = rng.choice([None, {"enable_thinking": False}]) if reasoning == "qwen3" else None
    max_calls = rng.choice([None, 1])
    text = _with_thinking(rng, _tool_output(rng, fmt), reasoning, kwargs is not None)
    reason, stop_reason = "stop", None
    if rng.random() < 0.4:  # cut at max_tokens, or by a stop string, anywhere
        text = text[:rng.randint(0, len(text))]
        reason = rng.choice(["length", "stop"])
        stop_reason = "stop-string" if reason == "stop" else None
    return fmt, reasoning, kwargs, max_calls, text, reason, stop_reason


def test_every_parser_streams_its_message():
    from pagoda.entrypoints.openai.tool_calling import ToolPlan, finish_reason

    rng = random.Random("stream-parity-tools-parsers")
    failures = []
    for _ in range(2500):
        fmt, reasoning, kwargs, max_calls, text, reason, stop_reason = _draw_output(rng, PARSERS)
        plan = ToolPlan({"required": "required", "named": "named", None: "none"}.get(fmt, "auto"))  # type: ignore
        m = _chat_parser(fmt, reasoning, kwargs, max_calls).message(text, reason, stop_reason)
        want = (m.reasoning or "", m.content or "", [(c["function"]["name"], c["function"]["arguments"])
                                                     for c in m.tool_calls],
                finish_reason(plan, bool(m.tool_calls) and m.calls_complete, reason))
        p = _chat_parser(fmt, reasoning, kwargs, max_calls)
        parts, so_far, got_r, got_c, calls = _pieces(rng, text), "", "", "", {}
        for i, piece in enumerate(parts):
            so_far += piece
            last = i == len(parts) - 1
            d = p.delta(so_far, last, reason if last else None, stop_reason if last else None)
            got_r += d.get("reasoning") or ""
            got_c += d.get("content") or ""
            for t in d.get("tool_calls") or []:
                if "id" in t:
                    calls[t["index"]] = [t["function"]["name"], ""]
                calls[t["index"]][1] += t["function"].get("arguments") or ""
        got = (got_r, got_c, [tuple(calls[i]) for i in sorted(calls)], finish_reason(plan, p.tools_called, reason))
        if got != want:
            failures.append(f"{fmt} {reasoning} {kwargs} {reason}/{stop_reason} {text!r}\n    unstreamed {want}\n"
                            f"    streamed   {got}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:6])


def test_every_parser_streams_its_responses_items():
    """The Responses API's items (reasoning, message, function calls: their order, texts, arguments and statuses),
    built by the stream's events and unstreamed (the message came first unstreamed even where all of its text
    followed the calls, which the stream had opened first)."""
    from pagoda.entrypoints.openai.responses_tools import ResponsesItemStream, output_items

    def items(out: list[Any]) -> list[tuple[Any, ...]]:
        return [(o.type, o.name, o.arguments, o.status) if o.type == "function_call" else
                (o.type, [c.text for c in o.content], o.status) for o in out]

    rng = random.Random("stream-parity-tools-responses-items")
    failures = []
    for _ in range(1500):
        fmt, reasoning, kwargs, max_calls, text, reason, stop_reason = _draw_output(rng, PARSERS)
        status = "incomplete" if reason == "length" else "completed"
        want = items(output_items(_chat_parser(fmt, reasoning, kwargs, max_calls).message(text, reason, stop_reason),
                                  status))
        stream = ResponsesItemStream(_chat_parser(fmt, reasoning, kwargs, max_calls), lambda kind, **fields: kind)
        parts, so_far = _pieces(rng, text), ""
        for i, piece in enumerate(parts):
            so_far += piece
            last = i == len(parts) - 1
            stream.feed(so_far, last, reason if last else None, stop_reason if last else None)
        stream.finish(status)  # type: ignore[arg-type]
        if items(stream.items) != want:
            failures.append(f"{fmt} {reasoning} {reason} {text!r}\n    unstreamed {want}\n"
                            f"    streamed   {items(stream.items)}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:6])


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json", "required", "named", "mistral", "pythonic"])
def test_a_malformed_output_streams_as_documented(fmt):
    """docs/serving.md: a malformed output cannot be taken back once streamed, but once a call was streamed its text
    is never sent again as content, and ``tool_calls`` is the finish reason only with every call finished. A fault
    inside a call's JSON sent the whole raw text as content after the call's deltas, and finished ``tool_calls``
    with the call half sent."""
    from pagoda.entrypoints.openai.tool_calling import ToolPlan, finish_reason

    marker = {"hermes": "<tool_call>", "llama3_json": '"name"', "required": '"name"', "named": "{"}.get(fmt)
    rng = random.Random(f"stream-parity-tools-malformed-{fmt}")
    failures = []
    for _ in range(300):
        text = _tool_output(rng, fmt)
        if rng.random() < 0.6:  # a fault somewhere
            i = rng.randrange(len(text))
            text = text[:i] + rng.choice(["#", "}", "]", '"', "x y", ")"]) + text[i:]
        else:  # EOS inside a call
            text = text[:rng.randrange(len(text))]
        p = _chat_parser(fmt, None, None, None)
        parts, so_far, content, calls = _pieces(rng, text), "", "", {}
        for i, piece in enumerate(parts):
            so_far += piece
            d = p.delta(so_far, i == len(parts) - 1, "stop" if i == len(parts) - 1 else None)
            content += d.get("content") or ""
            for t in d.get("tool_calls") or []:
                if "id" in t:
                    calls[t["index"]] = [t["function"]["name"], ""]
                calls[t["index"]][1] += t["function"].get("arguments") or ""
        mode = {"required": "required", "named": "named"}.get(fmt, "auto")
        if finish_reason(ToolPlan(mode), p.tools_called, "stop") == "tool_calls" and not all(
                isinstance(_loads(a), dict) for _, a in calls.values()):
            failures.append(f"tool_calls with unfinished calls: {text!r} -> {calls}")
        if calls and marker is not None and marker in content:
            failures.append(f"a streamed call's text sent again as content: {text!r} -> {content!r}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:6])
