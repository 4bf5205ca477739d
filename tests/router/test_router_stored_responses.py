"""Stored Responses API answers through the router: each lives on the replica that made it (its Responses store),
so GET / DELETE /v1/responses/{id}, POST /v1/responses/{id}/cancel and a continued turn (``previous_response_id``)
reach that replica whatever the routing policy would pick, and an id no replica holds is a 404. Fake replicas
(tests/router/router_utils.FakeBackend) keep what they answered; no model runs here."""

from __future__ import annotations

import httpx
import pytest
from router_utils import FakeBackend


def _new(router, **extra) -> dict:
    r = router.post("/v1/responses", {"model": "fake", "input": "hi", **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_each_stored_response_is_reached_on_its_replica(fakes, routers):
    a, b = fakes(store_responses=True), fakes(store_responses=True)
    r = routers([a.url, b.url])  # round robin: consecutive answers come from both replicas
    made = [_new(r) for _ in range(4)]
    assert {m["port"] for m in made} == {a.port, b.port}
    for m in made:
        got = httpx.get(f"{r.url}/v1/responses/{m['id']}", timeout=30)
        assert got.status_code == 200 and got.json()["port"] == m["port"]
        c = httpx.post(f"{r.url}/v1/responses/{m['id']}/cancel", timeout=30)
        assert c.status_code == 200 and c.json()["id"] == m["id"]
        listed = httpx.get(f"{r.url}/v1/responses/{m['id']}/input_items?order=asc&limit=5", timeout=30)
        assert listed.status_code == 200 and listed.json()["port"] == m["port"]
    # a continued turn goes to the replica holding the turn it continues, every time
    for m in made:
        for _ in range(2):
            nxt = _new(r, previous_response_id=m["id"])
            assert nxt["port"] == m["port"] and nxt["previous_response_id"] == m["id"]
    # an id is looked up once (a GET to each replica), then remembered: with the client's own GET forwarded to the
    # holder, each id was asked for three times in all, whatever came after
    gets = [p for fake in (a, b) for p, _ in fake.gets if p.startswith("/v1/responses/") and "/input_items" not in p]
    assert sorted(gets) == sorted(f"/v1/responses/{m['id']}" for m in made for _ in range(3))
    # delete reaches the holder; afterwards no replica has it
    gone = made[0]["id"]
    d = httpx.delete(f"{r.url}/v1/responses/{gone}", timeout=30)
    assert d.status_code == 200 and d.json()["deleted"] is True
    holder = a if made[0]["port"] == a.port else b
    assert gone not in holder.stored
    for path in (f"/v1/responses/{gone}", "/v1/responses/resp_unknown"):
        miss = httpx.get(r.url + path, timeout=30)
        assert miss.status_code == 404 and miss.json()["error"]["code"] == "response_not_found"
    # the metrics name the route, not each id
    assert r.metric("pagoda:router_requests_total", path="/v1/responses/{id}", status="200") >= 4
    assert r.metric("pagoda:router_requests_total", path="/v1/responses/{id}/cancel", status="200") == 4


def test_unknown_previous_response_id_reaches_a_replica(fakes, routers):
    """No replica holds it: the request goes where the policy sends it, whose answer (pagoda serve: a 404 naming
    previous_response_id) the client gets."""
    a = fakes(store_responses=True)
    r = routers([a.url])
    out = _new(r, previous_response_id="resp_nowhere")
    assert out["port"] == a.port and a.posts[-1][1]["previous_response_id"] == "resp_nowhere"


@pytest.mark.parametrize("key_ok", [False, True])
def test_replica_refusing_the_clients_key(fakes, routers, key_ok):
    a = FakeBackend(api_key="secret", store_responses=True)
    try:
        r = routers([a.url])
        a.stored["resp_x"] = {"id": "resp_x", "port": a.port}
        headers = {"Authorization": "Bearer secret" if key_ok else "Bearer wrong"}
        got = httpx.get(f"{r.url}/v1/responses/resp_x", headers=headers, timeout=30)
        assert got.status_code == (200 if key_ok else 401), got.text
    finally:
        a.stop()
