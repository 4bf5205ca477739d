"""The router in front of real ``pagoda serve`` replicas (tiny random Llama, shared by the session):
round-robin spread, session stickiness, prefix affinity, model routing by the ``model`` field, and
answers (plain and streamed) equal to the replica's own."""

from __future__ import annotations

import http.client
import json

import httpx
import pytest
from router_utils import RouterThread, router_config
from server_utils import API_KEY, wait_for

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
    assert missing.json() == replicas["a"].post("/v1/completions", {"model": "nope", "prompt": "x"}).json()


def test_router_errors_equal_the_replicas_own(replicas, make_router):
    r = make_router(["a"])
    for method, path in (("GET", "/v1/nothing"), ("POST", "/v1/nothing"), ("GET", "/v1/completions"),
                         ("GET", "/v1/models/nope")):
        mine = httpx.request(method, r.url + path, headers=AUTH, timeout=30)
        theirs = httpx.request(method, replicas["a"].url + path, headers=AUTH, timeout=30)
        assert (mine.status_code, mine.json()) == (theirs.status_code, theirs.json()), path


def test_router_without_a_key_in_front_of_replicas_with_one(replicas):
    """The router has no key (no --api-key, no --backend-api-key); the clients send the replicas' key."""
    r = RouterThread(router_config([replicas["a"].url, replicas["c"].url]))
    try:
        assert r.metric("pagoda:router_backend_unauthorized", backend=replicas["a"].url) == 1
        ids = sorted(m["id"] for m in httpx.get(r.url + "/v1/models", headers=AUTH, timeout=30).json()["data"])
        assert ids == ["tiny", "tiny-b"]
        assert httpx.get(r.url + "/v1/models/tiny-b", headers=AUTH, timeout=30).json()["id"] == "tiny-b"
        for i in range(4):  # never a 404 from the replica that serves the other model
            assert complete(r, f"keyless router {i}", model="tiny-b").json()["model"] == "tiny-b"
            assert complete(r, f"keyless router {i}").json()["model"] == "tiny"
        assert httpx.get(r.url + "/v1/models", timeout=30).status_code == 401
    finally:
        r.stop()


def test_client_that_drops_a_non_streamed_request_has_it_aborted(replicas, make_router):
    """As tests/server/test_concurrency's test of the same name, through the router: the client hangs up while
    the replica's own metrics show its request mid-generation; the replica aborts it."""
    c = replicas["c"]
    r = make_router(["c"])
    aborted_before = c.metric("pagoda:request_success_total", finished_reason="abort")
    generated_before = c.metric("pagoda:generation_tokens_total")
    body = json.dumps({"model": "tiny-b", "prompt": "hi", "max_tokens": 1500, "temperature": 0, "ignore_eos": True})
    conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=60)
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json", **AUTH})

    def mid_generation() -> bool:
        generated = c.metric("pagoda:generation_tokens_total") - generated_before
        return c.metric("pagoda:num_requests_running") == 1 and 0 < generated < 800

    try:
        assert wait_for(mid_generation, timeout=60, interval=0.001), "the request was never seen mid-generation"
    finally:
        conn.close()
    assert wait_for(lambda: c.metric("pagoda:request_success_total", finished_reason="abort")
                    == aborted_before + 1, timeout=10)
    assert wait_for(lambda: c.metric("pagoda:num_requests_running") == 0, timeout=10)
    assert c.metric("pagoda:generation_tokens_total") - generated_before < 1500
    assert wait_for(lambda: r.metric("pagoda:router_requests_total", backend=c.url, status="499") == 1, 10)
