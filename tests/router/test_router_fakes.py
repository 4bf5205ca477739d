"""The router against fake replicas that misbehave on purpose (tests/router/router_utils.FakeBackend):
streaming pass-through, timeouts, garbage, broken streams, retries, health, API key, body cap, model
routing, load, backends file and Kubernetes discovery. No model runs here."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import httpx
import pytest
from router_utils import FakeBackend, RouterThread
from server_utils import wait_for

from pagoda.router.discovery import FileSource, KubernetesSource

COMPLETION = {"model": "fake", "prompt": "hi", "max_tokens": 2}


def sse_lines(router: RouterThread, body: dict, on_first=None) -> list[str]:
    out = []
    with httpx.stream("POST", router.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                out.append(line)
                if len(out) == 1 and on_first:
                    on_first()
    return out


def test_stream_chunks_are_forwarded_as_they_arrive(fakes, routers):
    # The replica sends its second event only after the client has the first one: a router that
    # buffered the stream would never deliver the first, and this request would time out.
    b = fakes("gated")
    r = routers([b.url])
    lines = sse_lines(r, COMPLETION, on_first=b.gate.set)
    assert lines == ['data: {"n": 1}', 'data: {"n": 2}', "data: [DONE]"]


def test_client_that_goes_away_closes_the_upstream_request(fakes, routers):
    b = fakes("gated")
    r = routers([b.url])
    with httpx.stream("POST", r.url + "/v1/completions", json={**COMPLETION, "stream": True}, timeout=60) as s:
        # Keep the line iterator: a discarded one is closed at once, and httpcore then closes the connection, so
        # the router saw the client leave before the check below (it failed whenever the router was quicker).
        lines = s.iter_lines()
        assert next(lines) == 'data: {"n": 1}'
        held = r.state.pool.backends[b.url]
        assert held.in_flight == 1
    # the client hung up before the replica finished: the router lets go of it (the replica sees its
    # connection closed, which is how pagoda serve and vLLM abort a request)
    assert wait_for(lambda: held.in_flight == 0, 20)
    assert wait_for(lambda: b.closed >= 1, 20)


def test_hanging_backend_is_a_504(fakes, routers):
    r = routers([fakes("hang").url], request_timeout_s=0.5)
    resp = r.post("/v1/completions", COMPLETION)
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "backend_timeout"
    assert r.metric("pagoda:router_requests_total", status="504") == 1


def test_garbage_is_a_502_and_retried_elsewhere(fakes, routers):
    bad = fakes("garbage")
    r = routers([bad.url])
    resp = r.post("/v1/completions", COMPLETION)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "backend_error"
    good = fakes("ok")
    r2 = routers([bad.url, good.url])
    for _ in range(4):
        assert r2.post("/v1/completions", COMPLETION).json() == {"ok": True, "port": good.port}
    assert r2.metric("pagoda:router_retries_total", backend=bad.url) >= 1


def test_stream_cut_mid_way_ends_with_an_error_event(fakes, routers):
    b = fakes("midstream")
    r = routers([b.url])
    lines = sse_lines(r, COMPLETION)
    assert lines[0] == 'data: {"n": 1}'
    assert lines[-1] == "data: [DONE]"
    err = json.loads(lines[1].removeprefix("data: "))
    assert err["error"]["code"] == "backend_error" and "mid-response" in err["error"]["message"]
    assert len(lines) == 3
    assert r.metric("pagoda:router_stream_errors_total", backend=b.url) == 1


def test_5xx_before_any_byte_is_retried(fakes, routers):
    bad, good = fakes("error500"), fakes("ok")
    r = routers([bad.url, good.url])
    for _ in range(4):
        assert r.post("/v1/completions", COMPLETION).status_code == 200
    assert len(bad.posts) >= 1 and len(good.posts) == 4
    only_bad = routers([bad.url])
    resp = only_bad.post("/v1/completions", COMPLETION)
    assert resp.status_code == 500 and resp.json()["error"]["message"] == "boom"  # the replica's own answer


def test_refused_backend_is_taken_out_and_put_back(fakes, routers):
    good = fakes("ok")
    # The dead port stays bound (not listening: connections are refused) until the replica comes up on it, so no
    # server started meanwhile can be handed it (the router's own free_port() once was, and answered /health).
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold.bind(("127.0.0.1", 0))
    dead_port = hold.getsockname()[1]
    dead_url = f"http://127.0.0.1:{dead_port}"
    try:
        r = routers([dead_url, good.url], health_check_interval_s=0.1)
        for _ in range(4):
            assert r.post("/v1/completions", COMPLETION).status_code == 200
        assert r.metric("pagoda:router_backend_healthy", backend=dead_url) == 0
        assert r.metric("pagoda:router_healthy_backends") == 1
    finally:
        hold.close()
    back = FakeBackend("ok", port=dead_port)  # a replica comes up on the dead port
    try:
        assert wait_for(lambda: r.metric("pagoda:router_backend_healthy", backend=dead_url) == 1, 20)
        for _ in range(4):
            assert r.post("/v1/completions", COMPLETION).status_code == 200
        assert len(back.posts) == 2  # round robin over both again
    finally:
        back.stop()


def test_api_key_checked_and_passed_on(fakes, routers):
    b = fakes("ok")
    r = routers([b.url], api_key="router-key", backend_api_key="backend-key")
    assert r.post("/v1/completions", COMPLETION).status_code == 401
    wrong = r.post("/v1/completions", COMPLETION, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(r.url + "/metrics").status_code == 401
    assert httpx.get(r.url + "/health").status_code == 200  # probes carry no key
    assert b.posts == []
    ok = r.post("/v1/completions", COMPLETION, headers={"Authorization": "Bearer router-key"})
    assert ok.status_code == 200 and b.posts[-1][1]["_auth"] == "Bearer backend-key"
    for header in ("bearer router-key", "BEARER  router-key"):  # the scheme in any case (RFC 9110, as vLLM)
        assert r.post("/v1/completions", COMPLETION, headers={"Authorization": header}).status_code == 200, header
    assert r.post("/v1/completions", COMPLETION, headers={"Authorization": "Basic router-key"}).status_code == 401
    same = routers([b.url], api_key="router-key")  # no --backend-api-key: the client's key goes on
    assert same.post("/v1/completions", COMPLETION, headers={"Authorization": "Bearer router-key"}).status_code == 200
    assert b.posts[-1][1]["_auth"] == "Bearer router-key"


def test_body_over_the_cap_is_a_400(fakes, routers):
    b = fakes("ok")
    r = routers([b.url], max_request_body_bytes=1024)
    resp = r.post("/v1/completions", {**COMPLETION, "prompt": "x" * 2000})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "request_too_large"
    assert b.posts == []
    assert r.post("/v1/completions", COMPLETION).status_code == 200


def test_model_field_picks_the_replicas_and_models_are_merged(fakes, routers):
    a1, a2, b = fakes("ok", model="a"), fakes("ok", model="a"), fakes("ok", model="b")
    r = routers([a1.url, a2.url, b.url])
    assert wait_for(lambda: all(x.models for x in r.state.pool.all()), 10)
    assert sorted(m["id"] for m in httpx.get(r.url + "/v1/models").json()["data"]) == ["a", "b"]
    for _ in range(4):
        assert r.post("/v1/completions", {**COMPLETION, "model": "b"}).json()["port"] == b.port
        assert r.post("/v1/completions", {**COMPLETION, "model": "a"}).json()["port"] in (a1.port, a2.port)
    assert len(b.posts) == 4 and len(a1.posts) == len(a2.posts) == 2
    missing = r.post("/v1/completions", {**COMPLETION, "model": "c"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert httpx.get(r.url + "/v1/models/b").json()["id"] == "b"
    assert httpx.get(r.url + "/v1/models/c").status_code == 404


def test_a_model_whose_replicas_are_all_out_is_a_503_not_a_404(fakes, routers):
    """Clients retry a 503, not a 404 ("does not exist"): a model the router knows, whose only replica is out for
    now (a failed probe, a refused connection), is the former."""
    a, b = fakes("ok", model="a"), fakes("ok", model="b")
    r = routers([a.url, b.url], health_check_interval_s=3600)  # the first probe only: nothing puts b back
    assert wait_for(lambda: all(x.models for x in r.state.pool.all()), 10)
    r.state.pool.backends[b.url].healthy = False  # as a failed probe or a refused connection leaves it
    out = r.post("/v1/completions", {**COMPLETION, "model": "b"})
    assert out.status_code == 503 and out.json()["error"]["code"] == "no_healthy_backend", out.text
    missing = r.post("/v1/completions", {**COMPLETION, "model": "c"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert r.post("/v1/completions", {**COMPLETION, "model": "a"}).status_code == 200


def test_leastloaded_reads_the_replicas_queues(fakes, routers):
    busy, idle = fakes("ok", running=3, waiting=4), fakes("ok")
    r = routers([busy.url, idle.url], "leastloaded")
    assert wait_for(lambda: r.state.pool.backends[busy.url].load == 7, 10)
    for _ in range(5):
        assert r.post("/v1/completions", COMPLETION).json()["port"] == idle.port
    assert busy.posts == []


def test_backends_file_is_reread_when_it_changes(fakes, routers, tmp_path):
    a, b = fakes("ok"), fakes("ok")
    path = tmp_path / "backends.yaml"
    path.write_text(f"- {a.url}\n")
    r = routers([], sources=[FileSource(str(path))])
    assert r.post("/v1/completions", COMPLETION).json()["port"] == a.port
    path.write_text(json.dumps({"backends": [{"url": b.url}]}))
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 10))  # a new mtime even on a coarse clock
    assert wait_for(lambda: list(r.state.pool.backends) == [b.url], 10)
    assert r.post("/v1/completions", COMPLETION).json()["port"] == b.port
    # a's series went with it (each rollout on Kubernetes brings new addresses: kept, they would pile up)
    assert a.url not in httpx.get(r.url + "/metrics").text and a.url not in r.state.checker._last_stats
    path.write_text("not: [a, list")  # a broken file keeps the pool as it was
    os.utime(path, (st.st_atime, st.st_mtime + 20))
    assert not wait_for(lambda: list(r.state.pool.backends) != [b.url], 1)
    # a file with a bad URL too: the pool stays, and its backends are still probed (their model lists fetched)
    path.write_text(f"- {b.url}\n- http://127.0.0.1:abc\n")
    os.utime(path, (st.st_atime, st.st_mtime + 30))
    probes = len(b.gets)
    assert wait_for(lambda: len(b.gets) > probes + 2, 60)
    assert list(r.state.pool.backends) == [b.url]


def fake_k8s(slices: dict, seen: list) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path != "/apis/discovery.k8s.io/v1/namespaces/serving/endpointslices":
            return httpx.Response(404, json={"kind": "Status"})
        if request.headers.get("authorization") != "Bearer sa-token":
            return httpx.Response(401, json={"kind": "Status"})
        return httpx.Response(200, json=slices)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def endpoint_slice(ports: list[tuple[str, int]], endpoints: list[tuple[str, bool | None]]) -> dict:
    eps = []
    for addr, ready in endpoints:
        ep: dict = {"addresses": [addr]}
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        eps.append(ep)
    return {"kind": "EndpointSlice", "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
            "endpoints": eps}


def test_kubernetes_endpoint_slices(tmp_path):
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    slices = {"kind": "EndpointSliceList", "items": [
        endpoint_slice([("metrics", 9000), ("http", 8000)], [("10.0.0.1", True), ("10.0.0.2", False)]),
        endpoint_slice([("http", 8000)], [("10.0.0.3", None), ("fd00::4", True)])]}
    seen: list[httpx.Request] = []
    src = KubernetesSource("pagoda", "serving", "https://k8s.invalid", port_name="http", token_file=token,
                           client=fake_k8s(slices, seen))
    urls = asyncio.run(src.urls())
    assert urls == ["http://10.0.0.1:8000", "http://10.0.0.3:8000", "http://[fd00::4]:8000"]
    assert seen[0].url.params["labelSelector"] == "kubernetes.io/service-name=pagoda"
    src_port = KubernetesSource("pagoda", "serving", "https://k8s.invalid", port=7000, token_file=token,
                                client=fake_k8s(slices, seen))
    assert asyncio.run(src_port.urls())[0] == "http://10.0.0.1:7000"
    with pytest.raises(ValueError, match="KUBERNETES_SERVICE_HOST"):
        KubernetesSource("pagoda", "serving", None)


def test_router_discovers_replicas_from_kubernetes(fakes, routers, tmp_path):
    a, b = fakes("ok"), fakes("ok")
    token = tmp_path / "token"
    token.write_text("sa-token")
    slices = {"items": [endpoint_slice([("http", a.port)], [("127.0.0.1", True)]),
                        endpoint_slice([("http", b.port)], [("127.0.0.1", True)])]}
    src = KubernetesSource("pagoda", "serving", "https://k8s.invalid", token_file=token, client=fake_k8s(slices, []))
    r = routers([], sources=[src])
    ports = {r.post("/v1/completions", COMPLETION).json()["port"] for _ in range(4)}
    assert ports == {a.port, b.port}


def test_client_that_drops_a_non_streamed_request_closes_the_upstream_request(fakes, routers):
    # The replica answers a non-streamed request only once it is complete; a client that gives up before then
    # must close the router's request to the replica (which is how the replica learns to abort it).
    b = fakes("held")
    r = routers([b.url])
    held = r.state.pool.backends[b.url]
    with pytest.raises(httpx.ReadTimeout):
        r.post("/v1/completions", COMPLETION, timeout=0.5)
    assert wait_for(lambda: b.closed == 1, 10)
    assert wait_for(lambda: held.in_flight == 0, 10)
    assert r.metric("pagoda:router_requests_total", backend=b.url, path="/v1/completions", status="499") == 1
    b.gate.set()
    assert r.post("/v1/completions", COMPLETION).json() == {"ok": True, "port": b.port}


def test_answers_of_the_router_itself_are_counted(fakes, routers):
    b = fakes("ok")
    r = routers([b.url], max_request_body_bytes=1024, api_key="router-key")
    auth = {"Authorization": "Bearer router-key"}
    missing = r.post("/v1/completions", {**COMPLETION, "model": "nope"}, headers=auth)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"message": "The model `nope` does not exist.",  # pagoda serve's own answer
                                        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
    big = r.post("/v1/completions", {**COMPLETION, "prompt": "x" * 2000}, headers=auth)
    assert big.status_code == 400 and big.json()["error"]["code"] == "request_too_large"
    assert r.post("/v1/chat/completions", COMPLETION).status_code == 401
    assert b.posts == []
    for status, path in (("404", "/v1/completions"), ("400", "/v1/completions"), ("401", "/v1/chat/completions")):
        assert r.metric("pagoda:router_requests_total", backend="none", path=path, status=status) == 1, status
    assert r.metric("pagoda:router_request_latency_seconds_count", path="/v1/completions") == 2
    assert r.metric("pagoda:router_request_latency_seconds_count", path="/v1/chat/completions") == 1


def test_unknown_routes_and_methods_answer_in_openai_shape(fakes, routers):
    r = routers([fakes("ok").url])
    for resp, status, message in ((httpx.post(r.url + "/v1/audio/transcriptions", json={}), 404, "Not Found"),
                                  (httpx.post(r.url + "/reset_prefix_cache"), 404, "Not Found"),
                                  (httpx.get(r.url + "/v1/completions"), 405, "Method Not Allowed")):
        assert resp.status_code == status
        assert resp.json() == {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                         "code": None}}


def test_a_stream_abandoned_before_its_first_chunk_still_cleans_up():
    """Starlette may end a relayed stream's response before its body generator ever starts (the client left at that
    moment); a generator cancelled before its first step never runs its finally, so RelayedStream runs the clean-up
    (in-flight count, metrics, closing the upstream response) itself, once. A stream whose generator ran is left to
    the generator's own clean-up."""
    from starlette.requests import ClientDisconnect

    from pagoda.router.proxy import RelayedStream

    def make(calls: list[str]) -> tuple[RelayedStream, list[bool]]:
        started = [False]

        async def gen():
            started[0] = True
            yield b"data: x\n\n"

        async def abandoned() -> None:
            calls.append("abandoned")

        return RelayedStream(gen(), started, abandoned, media_type="text/event-stream"), started

    async def receive():
        return {"type": "http.disconnect"}

    async def gone(message):  # the client's connection is gone before the response starts
        raise OSError("client gone")

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    calls: list[str] = []
    resp, started = make(calls)
    with pytest.raises(ClientDisconnect):  # Starlette's word for a send that failed
        asyncio.run(resp(scope, receive, gone))
    assert calls == ["abandoned"] and started == [True]

    sent: list[dict] = []

    async def keep(message):
        sent.append(message)

    calls = []
    resp, started = make(calls)
    asyncio.run(resp(scope, receive, keep))
    assert calls == [] and started == [True] and any(m.get("body") == b"data: x\n\n" for m in sent)
