"""A replica that fails while the router is talking to it. It breaks off a relayed answer mid-body: an event stream
gets an error event, and any other body is never ended as if it were whole (the server drops the connection, so
the client sees a transport error, not a 200 with truncated JSON). It dies during a health probe that had seen it
alive: that probe cannot put it back in rotation."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from pagoda.router.backends import BackendPool
from pagoda.router.metrics import RouterMetrics
from pagoda.router.policies import RequestInfo, make_policy
from pagoda.router.proxy import Proxy, ProxyConfig


class _Broken(httpx.AsyncByteStream):
    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self):
        yield self.first
        raise httpx.ReadError("connection reset by peer")

    async def aclose(self) -> None:
        pass


def _relay(content_type: str, first: bytes) -> tuple[list[dict], BaseException | None, Proxy]:
    async def main():
        pool = BackendPool(["http://r1:8000"])
        client = httpx.AsyncClient(transport=httpx.MockTransport(
            lambda req: httpx.Response(200, headers={"content-type": content_type}, stream=_Broken(first))))
        proxy = Proxy(pool, make_policy("roundrobin"), client, RouterMetrics(), ProxyConfig())
        path = "/v1/embeddings" if content_type == "application/json" else "/v1/completions"
        resp = await proxy.forward("POST", path, b"{}", {}, RequestInfo(path), None, time.monotonic())
        sent: list[dict] = []

        async def send(msg):
            sent.append(msg)

        async def receive():
            await asyncio.sleep(3600)

        error = None
        try:
            await resp({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)
        except Exception as e:
            error = e
        await client.aclose()
        return sent, error, proxy

    return asyncio.run(main())


def test_a_body_cut_short_is_not_ended_as_whole():
    sent, error, proxy = _relay("application/json", b'{"object": "list", "data": [{"embedding": [0.1,')
    assert isinstance(error, httpx.ReadError)  # uvicorn then closes the connection without the chunked body's end
    assert not any(m["type"] == "http.response.body" and not m.get("more_body", False) for m in sent), sent
    assert proxy.pool.all()[0].in_flight == 0
    assert proxy.metrics.stream_errors.labels("http://r1:8000")._value.get() == 1


@pytest.mark.parametrize("first", [b"data: {}\n\n", b"data: {"])
def test_an_event_stream_cut_short_ends_with_an_error_event(first):
    sent, error, proxy = _relay("text/event-stream", first)
    assert error is None
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert body.startswith(first) and b'"error"' in body.split(first, 1)[1]
    assert sent[-1]["type"] == "http.response.body" and not sent[-1].get("more_body", False)
    assert proxy.pool.all()[0].in_flight == 0


def test_a_probe_older_than_a_refusal_does_not_put_the_replica_back():
    """The probe's /health passes, then the replica dies and a request finds it refusing (taken out), then the
    probe's later calls fail: the probe must not put back a replica it saw alive before that refusal. The next
    probe, begun after it, does when the replica answers."""
    from pagoda.router.backends import Backend
    from pagoda.router.health import HealthChecker

    b = Backend("http://r1:8000", healthy=False)  # out since an earlier refusal

    def dying(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        b.taken_out += 1  # meanwhile the replica died and a request found it refusing (Proxy._refused)
        raise httpx.ConnectError("refused", request=request)

    def alive(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [{"id": "m"}]}) if request.url.path == "/v1/models" \
            else httpx.Response(200, text="")

    async def probe(handler) -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await HealthChecker(client, {}, stats_interval_s=0.0).check(b)

    asyncio.run(probe(dying))
    assert not b.healthy
    asyncio.run(probe(alive))
    assert b.healthy and b.models == {"m"}
