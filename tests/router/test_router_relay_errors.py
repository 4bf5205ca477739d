"""A replica that breaks off a relayed answer mid-body: an event stream gets an error event, and any other body
is never ended as if it were whole (the server drops the connection, so the client sees a transport error, not a
200 with truncated JSON)."""

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
