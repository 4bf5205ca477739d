"""The router reaches every route a client of ``pagoda serve`` uses (the pooling routes and ``/version`` included, as
vLLM production-stack's router forwards /v1/score, /v1/rerank...), and a stream the client drops mid-way is counted
as the client's (``499``), as one it drops before the first chunk or a non-streamed one is."""

from __future__ import annotations

import httpx
import pytest
from router_utils import RouterThread, router_config
from server_utils import RemoteServer, wait_for

import pagoda
from pagoda.router.app import PROXIED_PATHS

# Every POST route of pagoda serve that answers one request by itself, with a body it accepts.
POOLING_BODIES = {
    "/v1/embeddings": {"input": ["the quick brown fox", "tokens"]},
    "/pooling": {"input": "the quick brown fox"},
    "/score": {"text_1": "the fox", "text_2": ["the quick brown fox", "tokens"]},
    "/v1/score": {"text_1": "the fox", "text_2": ["the quick brown fox", "tokens"]},
    "/rerank": {"query": "the fox", "documents": ["tokens", "the quick brown fox"]},
    "/v1/rerank": {"query": "the fox", "documents": ["tokens", "the quick brown fox"]},
    "/v2/rerank": {"query": "the fox", "documents": ["tokens", "the quick brown fox"], "top_n": 1},
}
SERVE_POST_ROUTES = {"/v1/completions", "/v1/chat/completions", "/v1/responses", "/tokenize", "/detokenize",
                     "/classify", *POOLING_BODIES}


def test_every_serve_route_is_proxied_to_a_replica(fakes, routers):
    assert SERVE_POST_ROUTES <= set(PROXIED_PATHS)
    b = fakes("ok")
    r = routers([b.url])
    for path in sorted(SERVE_POST_ROUTES):
        resp = r.post(path, {"model": "fake", "input": "x"})
        assert resp.status_code == 200, (path, resp.text)
        assert resp.json() == {"ok": True, "port": b.port}, path
    assert sorted(p for p, _ in b.posts) == sorted(SERVE_POST_ROUTES)
    for path in SERVE_POST_ROUTES:
        assert r.metric("pagoda:router_requests_total", backend=b.url, path=path, status="200") == 1, path
    v = httpx.get(r.url + "/version", timeout=10)
    assert v.status_code == 200 and v.json() == {"version": pagoda.__version__}


def test_version_needs_the_routers_key(fakes, routers):
    r = routers([fakes("ok").url], api_key="router-key")
    assert httpx.get(r.url + "/version", timeout=10).status_code == 401  # as pagoda serve's /version
    ok = httpx.get(r.url + "/version", headers={"Authorization": "Bearer router-key"}, timeout=10)
    assert ok.json() == {"version": pagoda.__version__}


def test_stream_dropped_mid_way_is_counted_as_the_clients(fakes, routers):
    b = fakes("gated")
    r = routers([b.url])
    with httpx.stream("POST", r.url + "/v1/completions", json={"model": "fake", "prompt": "hi", "stream": True},
                      timeout=60) as s:
        lines = s.iter_lines()  # kept: a discarded iterator closes the connection at once
        assert next(lines) == 'data: {"n": 1}'
    held = r.state.pool.backends[b.url]
    assert wait_for(lambda: held.in_flight == 0, 20)
    assert wait_for(lambda: b.closed >= 1, 20)
    # the replica aborted it; the router must not count it as a 200 answered in full
    assert wait_for(lambda: r.metric("pagoda:router_requests_total", backend=b.url, status="499") == 1, 10)
    assert r.metric("pagoda:router_requests_total", backend=b.url, status="200") == 0
    # a stream relayed to its end is still the replica's status
    b.gate.set()
    with httpx.stream("POST", r.url + "/v1/completions", json={"model": "fake", "prompt": "hi", "stream": True},
                      timeout=60) as s:
        assert [ln for ln in s.iter_lines() if ln][-1] == "data: [DONE]"
    assert wait_for(lambda: r.metric("pagoda:router_requests_total", backend=b.url, status="200") == 1, 10)
    assert r.metric("pagoda:router_requests_total", backend=b.url, status="499") == 1


@pytest.fixture(scope="module")
def embed_replica(tmp_path_factory):
    from pooling_models import build_pooling_model

    model = build_pooling_model(tmp_path_factory.mktemp("router_pool") / "bert", "bert")
    srv = RemoteServer(str(model), ["--dtype", "float32", "--max-model-len", "32", "--served-model-name", "emb"])
    yield srv
    srv.stop()


def test_pooling_routes_through_the_router_equal_the_replicas_own(embed_replica):
    r = RouterThread(router_config([embed_replica.url]))
    try:
        assert wait_for(lambda: httpx.get(r.url + "/health", timeout=5).status_code == 200, 30)
        for path, body in POOLING_BODIES.items():
            body = {"model": "emb", **body}
            direct = embed_replica.post(path, body)
            assert direct.status_code == 200, (path, direct.text)
            via = r.post(path, body)
            assert via.status_code == 200, (path, via.text)
            want, got = direct.json(), via.json()
            for answer in (want, got):  # per-request fields
                answer.pop("id", None)
                answer.pop("created", None)
            assert got == want, path
        bad = r.post("/v1/score", {"model": "emb", "text_1": "a"})  # the replica's own 400, relayed
        assert bad.status_code == 400 and bad.json() == embed_replica.post("/v1/score", {"model": "emb",
                                                                                        "text_1": "a"}).json()
    finally:
        r.stop()
