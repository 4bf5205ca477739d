"""vLLM's other routes: /ping, /invocations, /server_info, /tokenizer_info, /load, /v1/responses.

The shared ``server`` runs without the opt-in flags (so /tokenizer_info and /load are 404 there);
``flagged_server`` runs with ``--enable-tokenizer-info-endpoint --enable-server-load-tracking``.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from server_utils import API_KEY, MODEL, RemoteServer, wait_for

CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def flagged_server(tiny_model_dir):
    srv = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                             "--enable-tokenizer-info-endpoint", "--enable-server-load-tracking"],
                       api_key=API_KEY)
    yield srv
    srv.stop()


def sse_events(resp: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event."""
    out, name = [], None
    for line in resp.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[len("data: "):])))
            name = None
    return out


# ----------------------------------------------------------------------- SageMaker
def test_ping_is_health_and_needs_no_key(server):
    for method in ("GET", "POST"):
        r = httpx.request(method, server.url + "/ping", timeout=10)
        assert r.status_code == 200, (method, r.text)


def test_invocations_dispatches_by_shape(server):
    r = server.post("/invocations", {"model": MODEL, "messages": CHAT, "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"
    r = server.post("/invocations", {"model": MODEL, "prompt": "Hello", "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] == 5
    # the same answer as the route itself (greedy)
    direct = server.post("/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 5, "temperature": 0})
    assert direct.json()["choices"][0]["text"] == body["choices"][0]["text"]


def test_invocations_streams(server):
    with httpx.stream("POST", server.url + "/invocations", headers=server.headers, timeout=60,
                      json={"model": MODEL, "prompt": "Hello", "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200
        lines = [x for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["object"] == "text_completion"


def test_invocations_refuses_what_it_cannot_serve(server):
    # a pooling-shaped body goes to its route, which answers for a generative model as when called directly
    for path, body in (("/v1/embeddings", {"model": MODEL, "input": "embed me"}),
                       ("/v1/rerank", {"model": MODEL, "query": "q", "documents": ["d"]})):
        r, direct = server.post("/invocations", body), server.post(path, body)
        assert r.status_code == direct.status_code == 400 and r.json() == direct.json(), (r.text, direct.text)
    r = server.post("/invocations", {"model": MODEL})
    assert r.status_code == 400 and "Cannot find suitable handler" in r.json()["error"]["message"]
    # the chosen route's own validation applies
    r = server.post("/invocations", {"model": MODEL, "messages": "not a list"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = server.post("/invocations", b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert httpx.post(server.url + "/invocations", json={"prompt": "x"}, timeout=10).status_code == 401


# --------------------------------------------------------------------- server info
def test_server_info(server):
    info = server.get("/server_info").json()
    assert isinstance(info["vllm_config"], str) and "max_model_len=2048" in info["vllm_config"]
    assert isinstance(info["vllm_env"], dict) and "PAGODA_API_KEY" not in info["vllm_env"]
    assert info["pagoda_version"]
    cfg = server.get("/server_info", params={"config_format": "json"}).json()["vllm_config"]
    assert cfg["max_model_len"] == 2048 and cfg["served_model_name"][0] == MODEL
    assert server.get("/server_info", params={"config_format": "yaml"}).status_code == 400
    assert httpx.get(server.url + "/server_info", timeout=10).status_code == 401


def test_opt_in_routes_are_404_without_their_flags(server):
    assert server.get("/tokenizer_info").status_code == 404
    assert server.get("/load").status_code == 404


def test_tokenizer_info(flagged_server):
    info = flagged_server.get("/tokenizer_info").json()
    assert info["tokenizer_class"] and info["eos_token"]
    assert "{%" in info["chat_template"]  # the tiny model's ChatML template
    assert not any(k in info for k in ("vocab_file", "tokenizer_file"))
    assert httpx.get(flagged_server.url + "/tokenizer_info", timeout=10).status_code == 401


def test_load_counts_requests_in_flight(flagged_server):
    srv = flagged_server
    assert wait_for(lambda: srv.get("/load").json() == {"server_load": 0}, timeout=60)
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", srv.url + "/v1/completions", json=body, headers=srv.headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()  # kept: a dropped iterator closes the stream
        assert next(lines).startswith("data: ")  # the stream is open: the request is being served
        assert srv.get("/load").json() == {"server_load": 1}
    # the client went away: the request is aborted and no longer counted
    assert wait_for(lambda: srv.get("/load").json() == {"server_load": 0}, timeout=60)
    assert srv.post("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 2}).status_code == 200
    assert wait_for(lambda: srv.get("/load").json() == {"server_load": 0}, timeout=60)  # finished: not counted


def test_load_middleware_counts_until_the_last_byte():
    """The count itself, without a model: up during the call (a stream's last byte included), down after,
    also when the route raises; other routes untouched."""
    from pagoda.entrypoints.openai.middleware import ServerLoadMiddleware

    class Counter:
        server_load = 0

    seen: list[int] = []
    counter = Counter()

    async def app(scope, receive, send):
        seen.append(counter.server_load)
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        seen.append(counter.server_load)
        if scope["path"] == "/v1/chat/completions":
            raise RuntimeError("boom")

    async def send(msg):
        pass

    mw = ServerLoadMiddleware(app, counter)
    http = {"type": "http", "method": "POST"}
    asyncio.run(mw({**http, "path": "/v1/completions"}, None, send))
    with pytest.raises(RuntimeError):
        asyncio.run(mw({**http, "path": "/v1/chat/completions"}, None, send))
    asyncio.run(mw({**http, "path": "/tokenize"}, None, send))
    asyncio.run(mw({"type": "http", "method": "GET", "path": "/v1/completions"}, None, send))
    assert seen == [1, 1, 1, 1, 0, 0, 0, 0] and counter.server_load == 0


# ------------------------------------------------------------------------ responses
def test_responses_text_in_text_out(server):
    client = server.client()
    r = client.responses.create(model=MODEL, input="Tell me a story.", instructions="Be brief.",
                                max_output_tokens=6, temperature=0, top_p=1.0)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == MODEL
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 6 and r.usage.total_tokens == r.usage.input_tokens + 6
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output_text == r.output[0].content[0].text and r.output_text
    assert r.instructions == "Be brief." and r.max_output_tokens == 6 and r.store is False
    # built on chat: same prompt (template), same greedy answer
    chat = client.chat.completions.create(model=MODEL, max_tokens=6, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}])
    assert chat.choices[0].message.content == r.output_text
    assert chat.usage.prompt_tokens == r.usage.input_tokens


def test_responses_input_messages(server):
    client = server.client()
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "More?"}]}]
    r = client.responses.create(model=MODEL, input=msgs, max_output_tokens=4, temperature=0)
    chat = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "More?"}])
    assert r.output_text == chat.choices[0].message.content


def test_responses_stream(server):
    client = server.client()
    stream = client.responses.create(model=MODEL, input="Go on.", max_output_tokens=8, temperature=0, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text == events[-4].text and final.usage.output_tokens == 8
    whole = client.responses.create(model=MODEL, input="Go on.", max_output_tokens=8, temperature=0)
    assert whole.output_text == text
    # the SDK's stream helper accumulates the same response
    with client.responses.stream(model=MODEL, input="Go on.", max_output_tokens=8, temperature=0) as s:
        assert s.get_final_response().output_text == text
    # raw SSE: each event is named, no [DONE]
    with httpx.stream("POST", server.url + "/v1/responses", headers=server.headers, timeout=60,
                      json={"model": MODEL, "input": "Go on.", "max_output_tokens": 2, "stream": True}) as r:
        raw = sse_events(r)
    assert all(name == data["type"] for name, data in raw) and raw[-1][0] == "response.completed"


@pytest.mark.parametrize("field,value", [
    ("tools", [{"type": "web_search"}]), ("previous_response_id", "resp_x"),
    ("store", True), ("reasoning", {"effort": "low"}), ("background", True), ("truncation", "auto"),
    ("include", ["reasoning.encrypted_content"]), ("text", {"format": {"type": "yaml"}}),
    ("top_logprobs", 2), ("no_such_field", 1),
])
def test_responses_refuses_what_it_does_not_implement(server, field, value):
    r = server.post("/v1/responses", {"model": MODEL, "input": "hi", field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]


def test_responses_text_format_constrains_the_answer(server):
    """``text.format`` json_schema (the Responses API's flat shape) and json_object run as chat's response_format:
    the answer parses and follows the schema, or is a prefix of such JSON when cut at max_output_tokens."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    client = server.client()
    for fmt in ({"type": "json_schema", "name": "answer", "schema": schema, "strict": True}, {"type": "json_object"}):
        r = client.responses.create(model=MODEL, input="hi", max_output_tokens=40, temperature=0,
                                    text={"format": fmt})
        assert r.text.format.type == fmt["type"]
        if r.status == "completed":
            obj = json.loads(r.output_text)
            assert isinstance(obj, dict) and (fmt["type"] == "json_object" or set(obj) == {"ok"})
        else:
            assert r.output_text.startswith("{")
    bad = server.post("/v1/responses", {"model": MODEL, "input": "hi", "text": {"format": {
        "type": "json_schema", "name": "x", "schema": {"type": "nope"}}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "text", bad.text
    bad = server.post("/v1/responses", {"model": MODEL, "input": "hi", "text": {"format": {
        "type": "json_schema", "name": "x", "schema": schema, "strcit": True}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "text", bad.text
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    both = server.post("/v1/responses", {"model": MODEL, "input": "hi", "tools": [tool], "tool_choice": "required",
                                         "text": {"format": {"type": "json_object"}}})
    assert both.status_code == 400 and "not both" in both.json()["error"]["message"], both.text


def test_responses_refusals_through_the_client(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "http://x/y.png"}]}])
    assert "input" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=10**6)
    assert e.value.body["param"] == "max_output_tokens"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")
    # neutral values of unimplemented fields are fine
    r = client.responses.create(model=MODEL, input="hi", max_output_tokens=2, store=False, tools=[],
                                tool_choice="auto", truncation="disabled", text={"format": {"type": "text"}})
    assert r.usage.output_tokens <= 2
