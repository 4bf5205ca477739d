"""The router in front of real ``pagoda serve`` replicas (tiny random Llama, shared by the session):
round-robin spread, session stickiness, prefix affinity, model routing by the ``model`` field, and
answers (plain and streamed) equal to the replica's own."""

from __future__ import annotations

import json

import httpx
import pytest
from router_utils import RouterThread, router_config
from server_utils import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
GREEDY = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def make_router(replicas):
    made: list[RouterThread] = []

    def make(names: list[str], logic: str = "roundrobin", **kw) -> RouterThread:
        made.append(RouterThread(router_config([replicas[n].url for n in names], logic, api_key=API_KEY, **kw)))
        return made[-1]

    yield make
    for r in made:
        r.stop()


def served(replica) -> float:
    """Finished requests on a replica, from its own /metrics (``pagoda:`` or ``vllm:`` names)."""
    total = 0.0
    for line in replica.get("/metrics").text.splitlines():
        if line.split("{", 1)[0] in ("pagoda:request_success_total", "vllm:request_success_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def per_backend(router: RouterThread, replicas, names) -> dict[str, float]:
    return {n: router.metric("pagoda:router_requests_total", backend=replicas[n].url) for n in names}


def complete(router: RouterThread, prompt: str, model: str = "tiny", **kw) -> httpx.Response:
    resp = router.post("/v1/completions", {"model": model, "prompt": prompt, **GREEDY, **kw.pop("body", {})},
                       headers={**AUTH, **kw.pop("headers", {})})
    assert resp.status_code == 200, resp.text
    return resp


def test_roundrobin_spreads_evenly(replicas, make_router):
    r = make_router(["a", "b"])
    before = {n: served(replicas[n]) for n in "ab"}
    for i in range(6):
        complete(r, f"round robin {i}")
    assert {n: served(replicas[n]) - before[n] for n in "ab"} == {"a": 3, "b": 3}
    assert per_backend(r, replicas, "ab") == {"a": 3, "b": 3}


def test_answers_equal_the_replicas_own(replicas, make_router):
    r = make_router(["a", "b"])
    body = {"model": "tiny", "prompt": "The quick brown fox", **GREEDY, "max_tokens": 8}
    direct = replicas["a"].post("/v1/completions", body).json()["choices"][0]["text"]
    for _ in range(2):  # one on each replica: same weights, same greedy text
        assert r.post("/v1/completions", body, headers=AUTH).json()["choices"][0]["text"] == direct
    events = []
    with httpx.stream("POST", r.url + "/v1/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=60) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [ln.removeprefix("data: ") for ln in s.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    # (how many chunks the replica sends depends on its speed: it merges tokens produced between two
    # sends; that chunks pass unbuffered is test_router_fakes' gated-stream test)
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == direct
    tok = r.post("/tokenize", {"model": "tiny", "prompt": "hello world"}, headers=AUTH)
    assert tok.json() == replicas["a"].post("/tokenize", {"model": "tiny", "prompt": "hello world"}).json()


def test_session_sticks_to_one_replica(replicas, make_router):
    r = make_router(["a", "b"], "session", session_key="x-user-id")
    for user in ("alice", "bob", "carol", "dave"):
        before = per_backend(r, replicas, "ab")
        for i in range(3):
            complete(r, f"turn {i}", headers={"x-user-id": user})
        after = per_backend(r, replicas, "ab")
        assert sorted(after[n] - before[n] for n in "ab") == [0, 3], user
    for user in ("erin", "frank"):  # no header: the body's OpenAI `user` field
        before = per_backend(r, replicas, "ab")
        for i in range(3):
            complete(r, f"turn {i}", body={"user": user})
        after = per_backend(r, replicas, "ab")
        assert sorted(after[n] - before[n] for n in "ab") == [0, 3], user


def test_prefix_goes_to_the_replica_that_has_it(replicas, make_router):
    r = make_router(["a", "b"], "prefixaware", prefix_chunk_size=32)
    for prefix in ("You are a helpful assistant who answers in French. " * 3,
                   "Summarise the following support ticket for an engineer. " * 3):
        before = per_backend(r, replicas, "ab")
        for i in range(4):
            complete(r, prefix + f"Question number {i}?")
        after = per_backend(r, replicas, "ab")
        assert sorted(after[n] - before[n] for n in "ab") == [0, 4], prefix


def test_model_field_routes_across_served_names(replicas, make_router):
    r = make_router(["a", "c"])
    ids = sorted(m["id"] for m in httpx.get(r.url + "/v1/models", headers=AUTH).json()["data"])
    assert ids == ["tiny", "tiny-b"]
    before = per_backend(r, replicas, "ac")
    for i in range(3):
        complete(r, f"model b {i}", model="tiny-b")
        chat = r.post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                               **GREEDY}, headers=AUTH)
        assert chat.status_code == 200 and chat.json()["model"] == "tiny"
    after = per_backend(r, replicas, "ac")
    assert {n: after[n] - before[n] for n in "ac"} == {"a": 3, "c": 3}
    missing = r.post("/v1/completions", {"model": "nope", "prompt": "x"}, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
