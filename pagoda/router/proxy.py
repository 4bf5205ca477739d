"""Forwarding one request to a replica.

Rules (the invariants the tests check):

* an attempt that fails before the response's first byte — connection refused, connection closed or
  garbage instead of an HTTP answer, or a 5xx status — is retried on another candidate replica, at most
  ``max_retries`` times and never twice on the same one; a refused connection also takes the replica
  out of rotation until its next passing health probe;
* a replica that accepts the request but sends no answer within ``--request-timeout`` seconds (between
  two reads) gets a 504 back to the client, not a retry: it may be running the request;
* a non-streamed answer of known length (up to :data:`WHOLE_LIMIT`) is relayed in one piece; any other
  body, once the status line is in, is relayed chunk by chunk as it arrives (``aiter_raw``: nothing
  is buffered or re-encoded); if the replica breaks off a server-sent-event stream, the client gets a
  final error event (``data: {"error": ...}`` then ``data: [DONE]``; on ``/v1/responses`` an
  ``event: error``) instead of a silent cut;
* a client that goes away closes the upstream connection, which aborts the request on the replica.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response, StreamingResponse

from pagoda.router.backends import Backend, BackendPool
from pagoda.router.metrics import NO_BACKEND, RouterMetrics
from pagoda.router.policies import RequestInfo, RoutingPolicy

logger = logging.getLogger("pagoda.router")

# Hop-by-hop and framing headers: the router frames its own responses and opens its own connections.
_DROP_REQUEST = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade",
                           "authorization", "te", "trailer", "proxy-authorization"})
_DROP_RESPONSE = frozenset({"content-length", "connection", "keep-alive", "transfer-encoding", "server", "date"})
# Failures before the first byte that say nothing was (or will be) answered: another replica may serve it.
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
              httpx.PoolTimeout, httpx.UnsupportedProtocol)


WHOLE_LIMIT = 1 << 20
"""Non-streamed answers up to this many bytes (by their Content-Length) are relayed in one piece."""


def _is_whole(resp: httpx.Response) -> bool:
    length = resp.headers.get("content-length")
    return (not resp.headers.get("content-type", "").startswith("text/event-stream") and length is not None
            and length.isdigit() and int(length) <= WHOLE_LIMIT)


def error_body(status: int, message: str, code: str | int | None = None, type_: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, as pagoda serve answers."""
    return {"error": {"message": message, "type": type_ or ("invalid_request_error" if status < 500 else
                                                               "server_error"), "param": None,
                      "code": code if code is not None else status}}


def error_response(status: int, message: str, code: str | int | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def stream_error_event(path: str, message: str) -> bytes:
    if path == "/v1/responses":
        event = {"type": "error", "code": "backend_error", "message": message, "param": None}
        return f"event: error\ndata: {json.dumps(event)}\n\n".encode()
    return f"data: {json.dumps(error_body(502, message, 'backend_error'))}\n\ndata: [DONE]\n\n".encode()


@dataclass
class ProxyConfig:
    max_retries: int = 2
    backend_api_key: str | None = None


class Proxy:
    def __init__(self, pool: BackendPool, policy: RoutingPolicy, client: httpx.AsyncClient, metrics: RouterMetrics,
                 config: ProxyConfig) -> None:
        self.pool = pool
        self.policy = policy
        self.client = client
        self.metrics = metrics
        self.config = config

    def upstream_headers(self, headers: list[tuple[str, str]], client_host: str | None) -> dict[str, str]:
        out = {k: v for k, v in headers if k.lower() not in _DROP_REQUEST}
        key = self.config.backend_api_key
        auth = next((v for k, v in headers if k.lower() == "authorization"), None)
        if key:
            out["authorization"] = f"Bearer {key}"
        elif auth:  # the router's own key (or none): passed on as it came
            out["authorization"] = auth
        if client_host:
            prior = out.get("x-forwarded-for")
            out["x-forwarded-for"] = f"{prior}, {client_host}" if prior else client_host
        return out

    def _done(self, b: Backend | None, path: str, status: str, t0: float) -> None:
        self.metrics.requests.labels(b.url if b else NO_BACKEND, path, status).inc()
        self.metrics.latency.labels(path).observe(time.monotonic() - t0)

    async def forward(self, method: str, path: str, body: bytes, headers: dict[str, str], info: RequestInfo,
                      model: str | None, t0: float) -> Response:
        tried: set[str] = set()
        failed: Response | None = None  # what the last failed attempt would answer
        for _ in range(self.config.max_retries + 1):
            candidates = self.pool.candidates(model, tried)
            if not candidates:
                break
            b = self.policy.choose(candidates, info)
            if tried:
                self.metrics.retries.labels(sorted(tried)[-1]).inc()
            tried.add(b.url)
            b.in_flight += 1
            try:
                req = self.client.build_request(method, b.url + path, content=body, headers=headers)
                resp = await self.client.send(req, stream=True)
            except httpx.ConnectError as e:  # before TimeoutException: ConnectTimeout is both
                b.in_flight -= 1
                self._refused(b, e)
                failed = error_response(502, "the backend refused the connection", "backend_error")
                continue
            except httpx.ConnectTimeout as e:
                b.in_flight -= 1
                self._refused(b, e)
                failed = error_response(502, "the backend did not accept the connection in time",
                                        "backend_error")
                continue
            except _RETRYABLE as e:
                b.in_flight -= 1
                failed = error_response(502, f"the backend sent no valid HTTP response ({type(e).__name__})",
                                        "backend_error")
                continue
            except httpx.TimeoutException:
                b.in_flight -= 1
                self._done(b, path, "504", t0)
                return error_response(504, "the backend did not answer within the router's --request-timeout",
                                      "backend_timeout")
            if resp.status_code >= 500:
                failed = await self._read_whole(resp, b)
                continue
            if _is_whole(resp):
                return await self._whole(resp, b, path, t0)
            return self._relay(resp, b, path, t0)
        return self._give_up(path, t0, failed, model)

    def _refused(self, b: Backend, e: Exception) -> None:
        if b.healthy:
            logger.warning("backend %s taken out: %r", b.url, e)
        b.healthy = False
        b.last_error = repr(e)

    async def _read_whole(self, resp: httpx.Response, b: Backend) -> Response:
        try:
            content = await resp.aread()
        except httpx.HTTPError:
            content = json.dumps(error_body(resp.status_code, f"the backend answered {resp.status_code}")).encode()
        finally:
            b.in_flight -= 1
            await resp.aclose()
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
        return Response(content, status_code=resp.status_code, headers=headers)

    def _give_up(self, path: str, t0: float, failed: Response | None, model: str | None) -> Response:
        """Every allowed attempt failed before its first byte: the last failure's answer (a replica's 5xx, or
        a 502 naming what went wrong); no candidate at all: 503."""
        if failed is not None:
            self._done(None, path, str(failed.status_code), t0)
            return failed
        self._done(None, path, "503", t0)
        what = f" serving model `{model}`" if model else ""
        return error_response(503, f"no healthy backend{what}", "no_healthy_backend")

    async def _whole(self, resp: httpx.Response, b: Backend, path: str, t0: float) -> Response:
        """A non-streamed answer of known length: relayed in one piece (one write instead of a chunked stream;
        the replica sends it only once it is complete anyway)."""
        try:
            content = await resp.aread()
        except httpx.HTTPError as e:
            self.metrics.stream_errors.labels(b.url).inc()
            logger.warning("backend %s broke off a response to %s: %r", b.url, path, e)
            self._done(b, path, "502", t0)
            return error_response(502, f"the backend broke off its answer ({type(e).__name__})", "backend_error")
        finally:
            b.in_flight -= 1
            await resp.aclose()
        self._done(b, path, str(resp.status_code), t0)
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
        return Response(content, status_code=resp.status_code, headers=headers)

    def _relay(self, resp: httpx.Response, b: Backend, path: str, t0: float) -> StreamingResponse:
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
        is_sse = resp.headers.get("content-type", "").startswith("text/event-stream")
        return StreamingResponse(self._chunks(resp, b, path, t0, is_sse), status_code=resp.status_code,
                                 headers=headers)

    async def _chunks(self, resp: httpx.Response, b: Backend, path: str, t0: float,
                      is_sse: bool) -> AsyncIterator[bytes]:
        status = str(resp.status_code)
        tail = b"\n\n"
        try:
            async for chunk in resp.aiter_raw():
                if chunk:
                    tail = chunk[-2:]
                    yield chunk
        except httpx.HTTPError as e:
            status = "stream_error"
            self.metrics.stream_errors.labels(b.url).inc()
            logger.warning("backend %s broke off a response to %s: %r", b.url, path, e)
            if is_sse:
                sep = b"" if tail == b"\n\n" else b"\n\n"
                why = f"the backend serving this request failed mid-response ({type(e).__name__})"
                yield sep + stream_error_event(path, why)
        finally:  # bookkeeping first: a client that went away cancels this generator, and aclose may not finish
            b.in_flight -= 1
            self._done(b, path, status, t0)
            await resp.aclose()
