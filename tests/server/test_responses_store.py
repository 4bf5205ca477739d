"""The Responses API store (``PAGODA_ENABLE_RESPONSES_API_STORE=1``): ``store`` (on by default, as OpenAI's),
GET / DELETE /v1/responses/{id}, ``previous_response_id`` (a turn continues the stored conversation exactly as a
client sending the earlier items back would), ``background`` with cancel; and the start-up and request checks.

The reference for a continued turn is the same server answering the whole conversation sent as input with
``store: false`` (greedy, so the two must agree token for token)."""

from __future__ import annotations

import asyncio
import time

import pytest

MAX_ENTRIES = 4


@pytest.fixture(scope="module")
def app_client(tiny_model_dir):
    """An in-process app on the tiny model with the store on (room for MAX_ENTRIES responses)."""
    from fastapi.testclient import TestClient

    from pagoda.entrypoints.cli import build_parser
    from pagoda.entrypoints.openai.api_server import build_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("PAGODA_ENABLE_RESPONSES_API_STORE", "1")
        mp.setenv("PAGODA_RESPONSES_API_STORE_MAX_ENTRIES", str(MAX_ENTRIES))
        args = build_parser().parse_args(["serve", str(tiny_model_dir), "--kv-cache-memory-bytes", "32M"])
        with TestClient(build_app(args)) as client:
            deadline = time.monotonic() + 300  # the engine loads in the background (a cap on a hang, not a figure)
            while client.get("/health").status_code != 200:
                assert time.monotonic() < deadline, "the in-process server never became ready"
                time.sleep(0.2)
            yield client


GREEDY = {"max_output_tokens": 6, "temperature": 0}


def _post(client, body):
    r = client.post("/v1/responses", json={**GREEDY, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _text(resp) -> str:
    return "".join(p["text"] for it in resp["output"] if it["type"] == "message" for p in it["content"])


def _stateless(client, items, instructions=None):
    """The reference: the whole conversation as input, nothing stored."""
    body = {"input": items, "store": False, **({"instructions": instructions} if instructions else {})}
    resp = _post(client, body)
    assert resp["store"] is False and client.get(f"/v1/responses/{resp['id']}").status_code == 404
    return resp


def test_store_by_default_and_retrieve(app_client):
    resp = _post(app_client, {"input": "The sky is"})
    assert resp["store"] is True and resp["status"] in ("completed", "incomplete") and resp["background"] is False
    got = app_client.get(f"/v1/responses/{resp['id']}")
    assert got.status_code == 200 and got.json() == resp


def test_previous_response_id_continues_the_conversation(app_client):
    """Two turns by id answer as the same conversation sent whole; the first turn's instructions are not carried
    over (OpenAI's rule), the second's apply."""
    r1 = _post(app_client, {"input": "Name a colour.", "instructions": "Be brief."})
    r2 = _post(app_client, {"input": "And another?", "previous_response_id": r1["id"]})
    assert r2["previous_response_id"] == r1["id"]
    history = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": _text(r1)},
               {"role": "user", "content": "And another?"}]
    ref = _stateless(app_client, history)
    assert _text(r2) == _text(ref) and r2["usage"]["input_tokens"] == ref["usage"]["input_tokens"]
    # a third turn, streamed, with instructions of its own: the stream stores its final response
    r3 = app_client.post("/v1/responses", json={**GREEDY, "input": "Once more.", "instructions": "Answer.",
                                                "previous_response_id": r2["id"], "stream": True})
    assert r3.status_code == 200
    rid = next(line for line in r3.text.splitlines() if '"response.created"' in line and line.startswith("data"))
    rid = rid.split('"id": "')[1].split('"')[0]
    stored = app_client.get(f"/v1/responses/{rid}").json()
    ref3 = _stateless(app_client, [*history, {"role": "assistant", "content": _text(r2)},
                                   {"role": "user", "content": "Once more."}], instructions="Answer.")
    assert _text(stored) == _text(ref3) and stored["previous_response_id"] == r2["id"]
    assert stored["usage"]["input_tokens"] == ref3["usage"]["input_tokens"]


def test_bound_drops_the_oldest_but_keeps_its_descendants_whole(app_client):
    r1 = _post(app_client, {"input": "First."})
    r2 = _post(app_client, {"input": "Second.", "previous_response_id": r1["id"]})
    for i in range(MAX_ENTRIES):  # push r1 and r2 out of the lookup
        _post(app_client, {"input": f"filler {i}", "max_output_tokens": 1})
    assert app_client.get(f"/v1/responses/{r1['id']}").status_code == 404
    # r2's id is gone too; a turn stored after them that continued r2 would still hold both: show it on a fresh
    # chain kept alive while its root is dropped
    a = _post(app_client, {"input": "Alpha."})
    b = _post(app_client, {"input": "Beta.", "previous_response_id": a["id"]})
    for i in range(MAX_ENTRIES - 1):  # a dropped, b kept
        _post(app_client, {"input": f"filler {i}", "max_output_tokens": 1})
    assert app_client.get(f"/v1/responses/{a['id']}").status_code == 404
    c = _post(app_client, {"input": "Gamma.", "previous_response_id": b["id"]})
    ref = _stateless(app_client, [{"role": "user", "content": "Alpha."}, {"role": "assistant", "content": _text(a)},
                                  {"role": "user", "content": "Beta."}, {"role": "assistant", "content": _text(b)},
                                  {"role": "user", "content": "Gamma."}])
    assert _text(c) == _text(ref) and c["usage"]["input_tokens"] == ref["usage"]["input_tokens"]
    assert r2["id"]  # (r2 is dropped with r1: only its id stops resolving)


def test_delete_and_unknown_ids(app_client):
    resp = _post(app_client, {"input": "Delete me."})
    d = app_client.delete(f"/v1/responses/{resp['id']}")
    assert d.status_code == 200 and d.json() == {"id": resp["id"], "object": "response", "deleted": True}
    for path in (f"/v1/responses/{resp['id']}", "/v1/responses/resp_nope"):
        r = app_client.get(path)
        assert r.status_code == 404 and "not found" in r.json()["error"]["message"]
    assert app_client.delete("/v1/responses/resp_nope").status_code == 404
    r = app_client.post("/v1/responses", json={**GREEDY, "input": "hi", "previous_response_id": resp["id"]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"


@pytest.mark.parametrize("body,param", [
    ({"background": True, "store": False}, "background"),
    ({"background": True, "stream": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
])
def test_store_requests_it_refuses(app_client, body, param):
    r = app_client.post("/v1/responses", json={**GREEDY, "input": "hi", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_get_query_parameters_are_refused_by_name(app_client):
    resp = _post(app_client, {"input": "hi"})
    r = app_client.get(f"/v1/responses/{resp['id']}?stream=true")
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    assert app_client.get(f"/v1/responses/{resp['id']}?stream=false").status_code == 200


def _wait_finished(client, rid):
    deadline = time.monotonic() + 60  # bounds a hang only
    while True:
        got = client.get(f"/v1/responses/{rid}").json()
        if got["status"] not in ("queued", "in_progress"):
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_background_runs_to_the_same_answer(app_client):
    body = {"input": "Count to three."}
    queued = _post(app_client, {**body, "background": True})
    assert queued["status"] == "queued" and queued["background"] is True and queued["output"] == []
    done = _wait_finished(app_client, queued["id"])
    assert done["status"] in ("completed", "incomplete") and done["background"] is True
    fg = _post(app_client, body)
    same = ("input_tokens", "output_tokens", "output_tokens_details")  # the second one may hit the prefix cache
    assert _text(done) == _text(fg) and all(done["usage"][k] == fg["usage"][k] for k in same)
    # a finished background response cancels to itself; a foreground one cannot be cancelled
    c = app_client.post(f"/v1/responses/{queued['id']}/cancel")
    assert c.status_code == 200 and c.json()["status"] == done["status"]
    c = app_client.post(f"/v1/responses/{fg['id']}/cancel")
    assert c.status_code == 400 and "synchronous" in c.json()["error"]["message"]
    # a continued turn may follow a background one
    nxt = _post(app_client, {"input": "Go on.", "previous_response_id": queued["id"]})
    ref = _stateless(app_client, [{"role": "user", "content": "Count to three."},
                                  {"role": "assistant", "content": _text(done)}, {"role": "user", "content": "Go on."}])
    assert _text(nxt) == _text(ref)


def test_background_cancel(app_client, monkeypatch):
    """A background response held before its output arrives: continuing it is a 400 while it runs; cancelled, its
    status is ``cancelled`` (in the answer and by GET), its engine request is gone, and the server goes on
    serving."""
    import pagoda.entrypoints.openai.serving_responses as sr

    async def held(stream):  # the final output never comes: only a cancel ends this task
        await asyncio.Event().wait()

    monkeypatch.setattr(sr, "final_output", held)
    queued = _post(app_client, {"input": "Hold on.", "background": True, "max_output_tokens": 200,
                                "ignore_eos": True})
    got = app_client.get(f"/v1/responses/{queued['id']}").json()
    assert got["status"] in ("queued", "in_progress")
    r = app_client.post("/v1/responses", json={**GREEDY, "input": "hi", "previous_response_id": queued["id"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"
    c = app_client.post(f"/v1/responses/{queued['id']}/cancel")
    assert c.status_code == 200 and c.json()["status"] == "cancelled"
    assert app_client.get(f"/v1/responses/{queued['id']}").json()["status"] == "cancelled"
    assert queued["id"] not in app_client.app.state.pagoda.engine._streams  # aborted, not left running
    monkeypatch.undo()
    assert _post(app_client, {"input": "Still here?"})["status"] in ("completed", "incomplete")


def test_openai_client_round_trip(app_client):
    """The OpenAI SDK's create / retrieve / delete read pagoda's answers."""
    import openai

    client = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=app_client)
    r = client.responses.create(model=None, input="Hello", max_output_tokens=4, temperature=0)  # type: ignore[arg-type]
    again = client.responses.retrieve(r.id)
    assert again.output_text == r.output_text and again.store is True
    r2 = client.responses.create(model=None, input="More", previous_response_id=r.id,  # type: ignore[arg-type]
                                 max_output_tokens=4, temperature=0)
    assert r2.previous_response_id == r.id
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_conversation_of_calls_and_reasoning():
    """A stored turn's output items come back as the input items a client would send: the message's text and the
    calls (an assistant turn of tool calls), not the reasoning."""
    from pagoda.entrypoints.openai.protocol_responses import (
        FunctionCallItem,
        OutputMessage,
        OutputText,
        ReasoningItem,
        ReasoningText,
        ResponseObject,
        ResponsesRequest,
    )
    from pagoda.entrypoints.openai.responses_store import ResponseStore, StoredResponse
    from pagoda.entrypoints.openai.serving_responses import turn_messages

    resp = ResponseObject(id="resp_1", created_at=0, status="completed", model="m", output=[
        ReasoningItem(id="rs_1", status="completed", content=[ReasoningText(text="think")]),
        OutputMessage(id="msg_1", status="completed", content=[OutputText(text="Let me look.")]),
        FunctionCallItem(id="fc_1", call_id="call_1", name="f", arguments='{"a": 1}', status="completed"),
        FunctionCallItem(id="fc_2", call_id="call_2", name="g", arguments="{}", status="completed")])
    first = StoredResponse(resp, turn_messages(ResponsesRequest(input="weather?")))
    follow = ResponsesRequest(input=[{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
    nxt = StoredResponse(ResponseObject(id="resp_2", created_at=0, status="completed", model="m"),
                         turn_messages(follow), first)
    conv = [m.model_dump(exclude_none=True) for m in nxt.conversation()]
    assert conv == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Let me look."},
        {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
    # the rebuilt messages are copies: rendering cannot change what is stored
    nxt.conversation()[0].content = "changed"
    assert first.messages[0].content == "weather?"
    store = ResponseStore(1)
    store.put(first)
    store.put(nxt)
    assert store.get("resp_1") is None and store.get("resp_2") is nxt and len(store) == 1


def test_start_up_checks(monkeypatch):
    from pagoda.entrypoints.openai.responses_store import check_store_args

    monkeypatch.delenv("PAGODA_ENABLE_RESPONSES_API_STORE", raising=False)
    monkeypatch.setenv("VLLM_ENABLE_RESPONSES_API_STORE", "1")  # vLLM's name turns it on too
    with pytest.raises(ValueError, match="--api-server-count 2"):
        check_store_args(2)
    check_store_args(1)
    monkeypatch.setenv("PAGODA_RESPONSES_API_STORE_MAX_ENTRIES", "0")
    with pytest.raises(ValueError, match="PAGODA_RESPONSES_API_STORE_MAX_ENTRIES"):
        check_store_args(1)
    monkeypatch.setenv("PAGODA_ENABLE_RESPONSES_API_STORE", "0")  # pagoda's name wins over vLLM's
    check_store_args(2)


def test_input_items_list(app_client):
    """GET /v1/responses/{id}/input_items: the request's own input (not earlier turns'), newest first by default,
    with ids; OpenAI's paging (after, limit, has_more) and its SDK read it."""
    import openai

    items = [{"role": "user", "content": "One."}, {"role": "assistant", "content": "Two."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Three."}],
              "id": "msg_mine"}]
    resp = _post(app_client, {"input": items})
    page = app_client.get(f"/v1/responses/{resp['id']}/input_items?order=asc").json()
    assert page["object"] == "list" and page["has_more"] is False
    assert [(it["role"], it["content"]) for it in page["data"]] == [
        ("user", [{"type": "input_text", "text": "One."}]), ("assistant", [{"type": "output_text", "text": "Two."}]),
        ("user", [{"type": "input_text", "text": "Three."}])]
    ids = [it["id"] for it in page["data"]]
    assert ids[2] == "msg_mine" and len(set(ids)) == 3 and page["first_id"] == ids[0] and page["last_id"] == ids[2]
    desc = app_client.get(f"/v1/responses/{resp['id']}/input_items?limit=2").json()
    assert [it["id"] for it in desc["data"]] == ids[::-1][:2] and desc["has_more"] is True
    rest = app_client.get(f"/v1/responses/{resp['id']}/input_items?limit=2&after={desc['last_id']}").json()
    assert [it["id"] for it in rest["data"]] == [ids[0]] and rest["has_more"] is False
    # a continued turn lists its own input only; a string input is one user message
    nxt = _post(app_client, {"input": "Four.", "previous_response_id": resp["id"]})
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=app_client)
    listed = client.responses.input_items.list(nxt["id"])
    assert [(it.role, it.content[0].text) for it in listed.data] == [("user", "Four.")]
    for query, param in (("include=x", "include"), ("order=up", "order"), ("limit=0", "limit"),
                         ("after=msg_nope", "after")):
        r = app_client.get(f"/v1/responses/{resp['id']}/input_items?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, query
    assert app_client.get("/v1/responses/resp_nope/input_items").status_code == 404
