"""Every error case returns the right status and OpenAI's error shape, and the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest
from server_utils import API_KEY, MODEL

GOOD = {"model": MODEL, "prompt": "Paris is", "max_tokens": 3, "temperature": 0}
GOOD_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def check_error(r: httpx.Response, status: int, *needles: str, param: str | None = "any") -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    for n in needles:
        assert n in err["message"], err["message"]
    if param != "any":
        assert err["param"] == param, err
    return err


def good_request_works(server) -> None:
    r = server.post("/v1/completions", GOOD)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    r = server.post("/v1/chat/completions", GOOD_CHAT)
    assert r.status_code == 200, r.text


BAD_COMPLETIONS = [
    # (body, expected status, message fragments, param)
    ({**GOOD, "temperature": -1}, 400, ["temperature must be non-negative, got -1.0."], "temperature"),
    ({**GOOD, "temperature": 10001}, 400, ["temperature", "[0, 10000]"], "temperature"),
    ({**GOOD, "top_p": 0}, 400, ["top_p"], "top_p"),
    ({**GOOD, "max_tokens": 0}, 400, ["max_tokens"], "max_tokens"),
    ({**GOOD, "max_tokens": "many"}, 400, ["max_tokens"], "max_tokens"),
    ({**GOOD, "n": 0}, 400, ["n must be"], "n"),
    ({**GOOD, "n": 129}, 400, ["128"], "n"),
    ({**GOOD, "logprobs": 6}, 400, ["logprobs", "5"], "logprobs"),
    ({**GOOD, "prompt_logprobs": 6}, 400, ["Requested prompt logprobs of 6", "max allowed: 5"], "prompt_logprobs"),
    ({**GOOD, "prompt": ["a", "b", "c", "d", "e"]}, 400, ["at most 4 prompts"], "prompt"),
    ({**GOOD, "prompt": ""}, 400, ["empty"], "any"),
    ({**GOOD, "prompt": []}, 400, ["empty"], "prompt"),
    ({**GOOD, "prompt": [1, 2, 100000]}, 400, ["100000", "vocab"], "prompt"),
    ({**GOOD, "prompt": [1, "a"]}, 400, ["prompt"], "prompt"),
    ({"model": MODEL, "max_tokens": 3}, 400, ["prompt"], "prompt"),
    ({**GOOD, "max_tokens": 3000}, 400,
     ["This model's maximum context length is 2048 tokens. However, you requested", "in the prompt", "3000"],
     "max_tokens"),
    ({**GOOD, "prompt": "x " * 2100}, 400, ["This model's maximum context length is 2048 tokens"], "prompt"),
    ({**GOOD, "stop": [""]}, 400, ["stop"], "stop"),
    ({**GOOD, "logit_bias": {"99999": 1.0}}, 400, ["logit_bias", "vocab"], "logit_bias"),
    ({**GOOD, "logit_bias": {"abc": 1.0}}, 400, ["logit_bias"], "logit_bias"),
    ({**GOOD, "logit_bias": {"5": 500.0}}, 400, ["logit_bias"], "logit_bias"),
    ({**GOOD, "best_of": 3}, 400, ["best_of"], "best_of"),
    ({**GOOD, "suffix": "x"}, 400, ["suffix"], "suffix"),
    ({**GOOD, "stream_options": {"include_usage": True}}, 400, ["stream"], "stream_options"),
    ({**GOOD, "min_tokens": 5}, 400, ["min_tokens"], "min_tokens"),
    ({**GOOD, "model": "gpt-4"}, 404, ["gpt-4", "does not exist"], "model"),
]


@pytest.mark.parametrize("body,status,needles,param", BAD_COMPLETIONS,
                         ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_COMPLETIONS)])
def test_completion_errors(server, body, status, needles, param):
    check_error(server.post("/v1/completions", body), status, *needles, param=param)
    good_request_works(server)


BAD_CHAT = [
    ({**GOOD_CHAT, "messages": []}, 400, ["messages"]),
    ({**GOOD_CHAT, "messages": [{"content": "no role"}]}, 400, ["role"]),
    ({**GOOD_CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, ["text"]),
    ({**GOOD_CHAT, "top_logprobs": 2}, 400, ["logprobs"]),
    ({**GOOD_CHAT, "logprobs": True, "top_logprobs": 6}, 400, ["Requested sample logprobs of 6", "max allowed: 5"]),
    ({**GOOD_CHAT, "max_completion_tokens": 5000}, 400, ["maximum context length is 2048"]),
    # tools default tool_choice to "auto", which needs --enable-auto-tool-choice (vLLM's answer)
    ({**GOOD_CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, ["--enable-auto-tool-choice"]),
    ({**GOOD_CHAT, "response_format": {"type": "json_schema"}}, 400, ["response_format"]),
    ({**GOOD_CHAT, "chat_template": "{{ 'x' }}"}, 400, ["chat_template"]),
    ({**GOOD_CHAT, "add_generation_prompt": True, "continue_final_message": True}, 400, ["continue_final_message"]),
    ({**GOOD_CHAT, "model": "nope"}, 404, ["nope"]),
    ({**GOOD_CHAT, "n": 1000}, 400, ["128"]),
]


@pytest.mark.parametrize("body,status,needles", BAD_CHAT, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_CHAT)])
def test_chat_errors(server, body, status, needles):
    check_error(server.post("/v1/chat/completions", body), status, *needles)
    good_request_works(server)


@pytest.mark.parametrize("path,body,param,needles", [
    ("/v1/completions", b"", "prompt", ["body is empty", "prompt"]),
    ("/v1/chat/completions", b"", "messages", ["body is empty", "messages"]),
    ("/v1/chat/completions", {**GOOD_CHAT, "messages": []}, "messages", ["at least one message"]),
    ("/v1/chat/completions", {**GOOD_CHAT, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages", ["messages[0].content[0].text is required"]),
    ("/v1/chat/completions", {**GOOD_CHAT, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "refusal"}]}]},
     "messages", ["messages[1].content[0].refusal is required"]),
    ("/tokenize", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text"}]}]},
     "messages", ["messages[0].content[1].text"]),
])
def test_errors_name_the_field(server, path, body, param, needles):
    """param names the request field where one is known (an empty body: the first required field)."""
    check_error(server.post(path, body), 400, *needles, param=param)
    good_request_works(server)


def test_streaming_request_validation_is_400_before_the_stream(server):
    r = server.post("/v1/chat/completions", {**GOOD_CHAT, "stream": True, "temperature": -3})
    check_error(r, 400, "temperature")
    good_request_works(server)


def test_malformed_bodies(server):
    check_error(server.post("/v1/completions", b"{not json"), 400, "not valid JSON")
    check_error(server.post("/v1/completions", b"[1, 2]"), 400)
    check_error(server.post("/v1/chat/completions", b""), 400)
    check_error(server.post("/tokenize", b"{oops"), 400, "JSON")
    check_error(server.post("/tokenize", {"nothing": 1}), 400, "prompt")
    check_error(server.post("/detokenize", {"tokens": [1, 999999]}), 400, "999999")
    check_error(server.post("/detokenize", {"tokens": "abc"}), 400)
    good_request_works(server)


def test_body_size_cap(server):
    big = {**GOOD, "prompt": "x" * 70_000}
    err = check_error(server.post("/v1/completions", big), 400, str(64 * 1024), "--max-request-body-bytes")
    assert err["code"] == "request_too_large"
    # also without a Content-Length header (chunked upload)
    data = ("{\"model\": \"tiny\", \"prompt\": \"" + "y" * 70_000 + "\"}").encode()

    def gen():
        for i in range(0, len(data), 8192):
            yield data[i:i + 8192]

    r = httpx.post(server.url + "/v1/completions", content=gen(), timeout=30,
                   headers={**server.headers, "Content-Type": "application/json"})
    check_error(r, 400, "--max-request-body-bytes")
    good_request_works(server)


def test_unknown_route_and_method(server):
    check_error(server.get("/v1/nothing"), 404)
    r = server.get("/v1/completions")
    check_error(r, 405)
    assert r.headers.get("allow") == "POST"  # as Starlette's own 405 says (RFC 9110)
    check_error(server.get("/v1/models/unknown-model"), 404, "unknown-model")


@pytest.mark.parametrize("path,method", [("/v1/models", "GET"), ("/v1/completions", "POST"),
                                         ("/v1/chat/completions", "POST"), ("/tokenize", "POST"),
                                         ("/detokenize", "POST"), ("/metrics", "GET"), ("/version", "GET"),
                                         ("/docs", "GET"), ("/openapi.json", "GET")])
def test_api_key_required(server, path, method):
    body = GOOD_CHAT if "chat" in path else GOOD if "completions" in path else {"tokens": [1]} if "detok" in path \
        else {"prompt": "x"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                    {"Authorization": f"Bearer {API_KEY}x"}):
        r = httpx.request(method, server.url + path, headers=headers, json=body if method == "POST" else None,
                          timeout=30)
        err = check_error(r, 401)
        assert err["code"] == "invalid_api_key"
    r = httpx.request(method, server.url + path, headers=server.headers, json=body if method == "POST" else None,
                      timeout=30)
    assert r.status_code == 200, r.text


def test_health_needs_no_key(server):
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_openai_client_raises_typed_errors(server):
    c = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt="x", max_tokens=3000)
    assert "maximum context length" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="missing", prompt="x", max_tokens=3)
    bad = server.client()
    bad.api_key = "wrong"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert c.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.completion_tokens >= 1


def test_several_api_keys_each_open_the_routes():
    """--api-key repeated (vLLM takes several keys): any of them is accepted, nothing else."""
    import argparse

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from pagoda.entrypoints.openai.cli_args import add_serve_args
    from pagoda.entrypoints.openai.middleware import ApiKeyMiddleware

    args = add_serve_args(argparse.ArgumentParser()).parse_args(["--api-key", "k1", "--api-key", "k2"])
    assert args.api_key == ["k1", "k2"]
    app = Starlette(routes=[Route("/v1/models", lambda r: PlainTextResponse("ok"))])
    client = TestClient(ApiKeyMiddleware(app, args.api_key))
    for key, code in (("k1", 200), ("k2", 200), ("k3", 401), ("k1k2", 401)):
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == code, key
    assert client.get("/v1/models").status_code == 401
