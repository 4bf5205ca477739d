"""A router without a key of its own in front of key-protected replicas (tests/router/router_utils.FakeBackend
with ``api_key``): the clients send the replicas' key and the router passes it on, but the router's own
``/v1/models`` and ``/metrics`` requests are refused. It says so once per replica, treats their model lists as
unknown (not as "serves anything"), answers ``/v1/models`` with the client's own key, and routes a model it
cannot place by trying the replicas in turn until one serves it. No model runs here."""

from __future__ import annotations

import logging

import httpx
from router_utils import RouterThread
from server_utils import wait_for

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


def complete(r: RouterThread, model: str, headers: dict | None = None) -> httpx.Response:
    return r.post("/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2},
                  headers=AUTH if headers is None else headers)


def test_refused_refresh_is_logged_once_and_shown_in_metrics(fakes, routers, caplog):
    a, b = fakes("ok", model="a", api_key=KEY, running=3), fakes("ok", model="b", api_key=KEY)
    with caplog.at_level(logging.WARNING, logger="pagoda.router"):
        r = routers([a.url, b.url], health_check_interval_s=0.05, engine_stats_interval_s=0.05)
        assert wait_for(lambda: sum(p == "/metrics" for p, _ in a.gets) >= 3, 10)  # several refreshes, all refused
        r.stop()
    for f in (a, b):
        said = [rec.getMessage() for rec in caplog.records if f"backend {f.url} " in rec.getMessage()]
        assert len(said) == 1 and "--backend-api-key" in said[0] and "401" in said[0], said
        held = r.state.pool.backends[f.url]
        assert not held.models_known and held.denied == {"/v1/models", "/metrics"}
    assert r.state.pool.backends[a.url].load == 0  # the replica's queue is unknown: not guessed


def test_unknown_model_lists_are_answered_with_the_clients_key(fakes, routers):
    a, b = fakes("ok", model="a", api_key=KEY), fakes("ok", model="b", api_key=KEY)
    r = routers([a.url, b.url])
    assert r.metric("pagoda:router_backend_unauthorized", backend=a.url) == 1
    listed = httpx.get(r.url + "/v1/models", headers=AUTH)
    assert listed.status_code == 200 and sorted(m["id"] for m in listed.json()["data"]) == ["a", "b"]
    assert (a.gets[-1], b.gets[-1]) == (("/v1/models", f"Bearer {KEY}"), ("/v1/models", f"Bearer {KEY}"))
    assert httpx.get(r.url + "/v1/models/b", headers=AUTH).json()["id"] == "b"
    gone = httpx.get(r.url + "/v1/models/c", headers=AUTH)
    assert gone.status_code == 404 and gone.json()["error"] == {
        "message": "The model `c` does not exist.", "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}
    for path in ("/v1/models", "/v1/models/a"):  # no key: the replicas' own 401, not an empty list or a 404
        keyless = httpx.get(r.url + path)
        assert keyless.status_code == 401 and keyless.json()["error"]["code"] == "invalid_api_key", path


def test_a_model_on_replicas_of_unknown_lists_is_found_every_time(fakes, routers):
    a, b = fakes("ok", model="a", api_key=KEY), fakes("ok", model="b", api_key=KEY)
    r = routers([a.url, b.url])
    for _ in range(6):  # round robin starts on either: a 404 from the wrong one moves on to the next
        for model, f in (("a", a), ("b", b)):
            resp = complete(r, model)
            assert resp.status_code == 200 and resp.json()["port"] == f.port, resp.text
    assert r.metric("pagoda:router_requests_total", status="404") == 0
    assert r.metric("pagoda:router_retries_total") == 0  # not failures
    missing = complete(r, "c")  # no replica serves it: the replicas' own 404, after asking each
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert [p[1]["model"] for p in a.posts][-1] == [p[1]["model"] for p in b.posts][-1] == "c"
    keyless = complete(r, "a", headers={})
    assert keyless.status_code == 401 and keyless.json()["error"]["code"] == "invalid_api_key"


def test_replicas_known_to_serve_a_model_are_preferred(fakes, routers):
    open_a, locked_b = fakes("ok", model="a"), fakes("ok", model="b", api_key=KEY)
    r = routers([open_a.url, locked_b.url])
    for _ in range(4):
        assert complete(r, "a").json()["port"] == open_a.port
        assert complete(r, "b").json()["port"] == locked_b.port
    assert all(p[1]["model"] == "b" for p in locked_b.posts)  # never tried for a model known to be elsewhere
    assert sorted(m["id"] for m in httpx.get(r.url + "/v1/models", headers=AUTH).json()["data"]) == ["a", "b"]
    assert [m["id"] for m in httpx.get(r.url + "/v1/models").json()["data"]] == ["a"]  # what a keyless client sees


def test_backend_api_key_makes_lists_and_load_known(fakes, routers):
    busy, idle = fakes("ok", model="a", api_key=KEY, running=3, waiting=4), fakes("ok", model="a", api_key=KEY)
    r = routers([busy.url, idle.url], "leastloaded", backend_api_key=KEY)
    assert wait_for(lambda: r.state.pool.backends[busy.url].load == 7, 10)
    assert r.metric("pagoda:router_backend_unauthorized", backend=busy.url) == 0
    assert all(b.models_known for b in r.state.pool.all())
    for _ in range(3):
        assert complete(r, "a", headers={}).json()["port"] == idle.port
