"""Tool calls cut at ``max_tokens`` through the server (the default model behind ``--tool-call-parser hermes``).

A ``required`` / named tool choice cut while the call is written: the stream sends the call's deltas, then
finishes with ``length`` and no ``content`` (it used to send the whole raw JSON again as content after the
partial call deltas); what it sent, and what the non-streamed answer returns, is the cut output's prefix view,
which the reference parser reads from the text of the same tokens. The Responses API gives the same function_call
item streamed and not.
"""

from __future__ import annotations

import json

import httpx
import pytest
from server_utils import RemoteServer

from pagoda.entrypoints.openai.tool_parsers.constrained import NamedToolParser, RequiredToolParser

DEFAULT = "SmolLM2-135M-Instruct"
PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
          "required": ["city", "unit"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": PARAMS}}
FLAT_WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
                "parameters": PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def tool_server():
    srv = RemoteServer(None, ["--max-model-len", "1024", "--kv-cache-memory-bytes", "256M",
                              "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
                       env={"OMP_NUM_THREADS": "2"})
    yield srv
    srv.stop()


def sse(srv, path, body):
    with httpx.stream("POST", srv.url + path, json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]


def reassemble(chunks):
    content, calls, reasons, ids = "", {}, [], []
    for ch in chunks:
        for c in ch["choices"]:
            content += c["delta"].get("content") or ""
            for d in c["delta"].get("tool_calls") or []:
                if "id" in d:
                    calls[d["index"]] = [d["function"]["name"], ""]
                calls[d["index"]][1] += d["function"].get("arguments") or ""
            ids += c.get("token_ids") or []
            reasons.append(c["finish_reason"])
    return content, [tuple(calls[i]) for i in sorted(calls)], reasons[-1], ids


@pytest.mark.default_model
@pytest.mark.parametrize("choice,parser", [("required", RequiredToolParser), (NAMED, lambda: NamedToolParser(
    "get_weather"))], ids=["required", "named"])
def test_a_streamed_call_cut_at_max_tokens_has_no_raw_content(tool_server, choice, parser):
    sent_a_call = False
    for max_tokens in ((12, 14, 16, 18, 20, 24) if choice == "required" else (2, 3, 5, 7, 9)):
        body = {"model": DEFAULT, "messages": ASK, "tools": [WEATHER], "tool_choice": choice, "temperature": 0,
                "max_tokens": max_tokens, "return_token_ids": True}
        content, calls, reason, ids = reassemble(sse(tool_server, "/v1/chat/completions", body))
        r = httpx.post(tool_server.url + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0]
        assert reason == r["finish_reason"] == "length"
        if not calls:  # cut before the call's name was known: the text is content, streamed and not
            assert content == r["message"]["content"]
            continue
        sent_a_call = True
        assert content == "", content  # the call's JSON is not sent again as content
        assert all(name == "get_weather" for name, _ in calls)
        if ids == r["token_ids"]:  # the same tokens: both sent the cut output's prefix view, as the parser reads it
            got = [(c["function"]["name"], c["function"]["arguments"]) for c in r["message"]["tool_calls"]]
            assert got == calls and r["message"]["content"] is None
            text = tool_server.post("/detokenize", {"model": DEFAULT, "tokens": ids}).json()["prompt"]
            info = parser().extract_tool_calls(text, cut=True)
            assert [(c["function"]["name"], c["function"]["arguments"]) for c in info.tool_calls] == calls
            assert not info.complete
    assert sent_a_call


@pytest.mark.default_model
def test_responses_call_cut_at_max_output_tokens_streams_as_returned(tool_server):
    for max_tokens in (16, 18, 20, 24):
        body = {"model": DEFAULT, "input": ASK[0]["content"], "tools": [FLAT_WEATHER], "tool_choice": "required",
                "max_output_tokens": max_tokens, "temperature": 0}
        r = httpx.post(tool_server.url + "/v1/responses", json=body, timeout=120).json()
        events = sse(tool_server, "/v1/responses", body)
        final = events[-1]["response"]
        assert events[-1]["type"] == "response.completed" and final["status"] == r["status"] == "incomplete"
        kinds = [o["type"] for o in final["output"]]
        assert kinds in ([], ["message"], ["function_call"]), kinds  # never a message beside the call
        if kinds == ["function_call"] and r["usage"] == final["usage"]:
            # the same cut: the same item, its arguments unfinished
            assert [o["type"] for o in r["output"]] == kinds
            assert r["output"][0]["arguments"] == final["output"][0]["arguments"]
            assert r["output"][0]["name"] == "get_weather" and r["output"][0]["status"] == "incomplete"
            args = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
            assert args == r["output"][0]["arguments"]
