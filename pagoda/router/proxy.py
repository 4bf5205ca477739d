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
* a client that goes away closes the upstream connection, which aborts the request on the replica:
  while the answer is awaited (a non-streamed answer comes in one piece when it is complete) the
  client's connection is watched and the attempt cancelled when it closes; during a relayed stream
  Starlette notices it. Either way the request is counted with status ``499`` in the router's metrics
  (a stream is the replica's status only once its last byte went out);
* a request naming a ``model`` goes to the replicas known to serve it; only when none is known, to the
  replicas whose model list is unknown (they refuse the router's own ``/v1/models``): one of those that
  answers 404 ``model_not_found`` (or 401/403) is skipped for the next, without counting as a retry, and
  the client gets a 404 only when every one of them said so.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive

from pagoda.client_disconnect import unless_client_leaves
from pagoda.router.backends import Backend, BackendPool
from pagoda.router.metrics import CLIENT_GONE, RouterMetrics
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


def error_body(status: int, message: str, code: str | int | None = None, type_: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, as pagoda serve answers (``pagoda.entrypoints.openai.serving_engine.error_body``)."""
    # A message may quote the request (a model name); a lone surrogate from its JSON would break the rendering.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": type_ or ("invalid_request_error" if status < 500 else
                                                               "server_error"), "param": param,
                      "code": code if code is not None else status}}


def error_response(status: int, message: str, code: str | int | None = None,
                   headers: dict[str, str] | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param=param), status_code=status, headers=headers)


def model_not_found(model: str) -> JSONResponse:
    """pagoda serve's own answer to a model it does not serve."""
    return error_response(404, f"The model `{model}` does not exist.", "model_not_found", param="model")


def relayed(resp: httpx.Response, content: bytes | None = None) -> Response:
    """A replica's whole answer as the router's (framing headers dropped)."""
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
    return Response(resp.content if content is None else content, status_code=resp.status_code, headers=headers)


def error_code(content: bytes) -> Any:
    """``error.code`` of an OpenAI error body (None if it is not one)."""
    try:
        err = json.loads(content).get("error")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return err.get("code") if isinstance(err, dict) else None


def stream_error_event(path: str, message: str) -> bytes:
    if path == "/v1/responses":
        event = {"type": "error", "code": "backend_error", "message": message, "param": None}
        return f"event: error\ndata: {json.dumps(event)}\n\n".encode()
    return f"data: {json.dumps(error_body(502, message, 'backend_error'))}\n\ndata: [DONE]\n\n".encode()


class RelayedStream(StreamingResponse):
    """A relayed stream whose clean-up also runs when the response ends before its body generator ever started:
    Starlette cancels the response of a client that left, and a generator cancelled before its first step never
    runs its ``finally`` (the backend's in-flight count, the metrics, closing the upstream response).
    ``started[0]`` is set by the generator on entry; ``abandoned`` runs otherwise, once."""

    def __init__(self, content: AsyncIterator[bytes], started: list[bool], abandoned: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._started, self._abandoned = started, abandoned

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._started[0]:
                self._started[0] = True
                await self._abandoned()


@dataclass
class _Attempt:
    backend: Backend | None = None
    """The backend the current attempt went to (the one a client that leaves was waiting on)."""


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
        self.metrics.done(b.url if b else None, path, status, t0)

    async def forward(self, method: str, path: str, body: bytes, headers: dict[str, str], info: RequestInfo,
                      model: str | None, t0: float, receive: Receive | None = None, *, pin: str | None = None,
                      target: str | None = None) -> Response:
        """The request's answer from a replica. With ``receive`` (the client's ASGI channel, the body already read
        from it), a client that disconnects before the answer cancels the attempt, which closes the upstream
        connection (the replica then aborts the request): 499, counted with the backend that had it. ``pin``: the
        one replica (URL) that may answer (the one holding a stored response). ``target``: the path and query sent
        to the replica when ``path`` is a template (``/v1/responses/{id}``: the metrics' label, so ids do not make
        series of their own)."""
        at = _Attempt()
        work = self._forward(method, path, body, headers, info, model, t0, at, pin, target or path)
        if receive is None:
            return await work
        finished, answer = await unless_client_leaves(work, receive, path)
        if finished:
            assert answer is not None
            return answer
        self._done(at.backend, path, CLIENT_GONE, t0)
        logger.info("client left before the answer to %s; request on %s closed", path,
                    at.backend.url if at.backend else "no backend")
        return Response(status_code=499)

    async def _forward(self, method: str, path: str, body: bytes, headers: dict[str, str], info: RequestInfo,
                       model: str | None, t0: float, at: _Attempt, pin: str | None, target: str) -> Response:
        tried: set[str] = set()
        failed: Response | None = None  # what the last failed attempt would answer
        refused: tuple[Response, Backend] | None = None  # a replica of unknown models that does not serve this one
        failures = 0
        last_failed: str | None = None
        while failures <= self.config.max_retries:
            candidates = [b for b in self.pool.candidates(model, tried) if pin is None or b.url == pin]
            if not candidates:
                break
            b = self.policy.choose(candidates, info)
            if last_failed is not None:
                self.metrics.retries.labels(last_failed).inc()
                last_failed = None
            tried.add(b.url)
            at.backend = b
            guess = model is not None and not b.models_known
            b.in_flight += 1
            kept = False  # the relayed stream takes over the in-flight count
            try:
                try:
                    req = self.client.build_request(method, b.url + target, content=body, headers=headers)
                    resp = await self.client.send(req, stream=True)
                except httpx.ConnectError as e:  # before TimeoutException: ConnectTimeout is both
                    self._refused(b, e)
                    failed = error_response(502, "the backend refused the connection", "backend_error")
                    failures, last_failed = failures + 1, b.url
                    continue
                except httpx.ConnectTimeout as e:
                    self._refused(b, e)
                    failed = error_response(502, "the backend did not accept the connection in time",
                                            "backend_error")
                    failures, last_failed = failures + 1, b.url
                    continue
                except _RETRYABLE as e:
                    failed = error_response(502, f"the backend sent no valid HTTP response ({type(e).__name__})",
                                            "backend_error")
                    failures, last_failed = failures + 1, b.url
                    continue
                except httpx.TimeoutException:
                    self._done(b, path, "504", t0)
                    return error_response(504, "the backend did not answer within the router's --request-timeout",
                                          "backend_timeout")
                if resp.status_code >= 500:
                    failed = await self._read_whole(resp)
                    failures, last_failed = failures + 1, b.url
                    continue
                if guess and resp.status_code in (401, 403, 404):
                    answer = await self._read_whole(resp)
                    if resp.status_code != 404 or error_code(bytes(answer.body)) == "model_not_found":
                        if refused is None or (refused[0].status_code == 404 and resp.status_code != 404):
                            refused = (answer, b)  # an authorization failure says more than "not here"
                        continue
                    self._done(b, path, "404", t0)
                    return answer
                if _is_whole(resp):
                    return await self._whole(resp, b, path, t0)
                kept = True
                return self._relay(resp, b, path, t0)
            finally:
                if not kept:
                    b.in_flight -= 1
        return self._give_up(path, t0, failed, refused, model)

    def _refused(self, b: Backend, e: Exception) -> None:
        if b.healthy:
            logger.warning("backend %s taken out: %r", b.url, e)
        b.healthy = False
        b.taken_out += 1
        b.last_error = repr(e)

    async def _read_whole(self, resp: httpx.Response) -> Response:
        try:
            content = await resp.aread()
        except httpx.HTTPError:
            content = json.dumps(error_body(resp.status_code, f"the backend answered {resp.status_code}")).encode()
        finally:
            await resp.aclose()
        return relayed(resp, content)

    def _give_up(self, path: str, t0: float, failed: Response | None, refused: tuple[Response, Backend] | None,
                 model: str | None) -> Response:
        """No attempt gave an answer to relay: a replica's refusal to authorize the client, else the last failure's
        answer (a replica's 5xx, or a 502 naming what went wrong), else the 404 of a model that every replica of
        unknown models said it does not serve; no candidate at all: 503."""
        if refused is not None and (failed is None or refused[0].status_code != 404):
            self._done(refused[1], path, str(refused[0].status_code), t0)
            return refused[0]
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
            await resp.aclose()
        self._done(b, path, str(resp.status_code), t0)
        return relayed(resp, content)

    async def ask(self, path: str, headers: dict[str, str], backends: list[Backend],
                  timeout: float) -> list[tuple[Backend, httpx.Response]]:
        """``GET path`` on each of ``backends`` at once, with the client's own headers (the router cannot read
        their model lists itself); the answers, in the order of ``backends`` (one that fails is left out)."""
        async def one(b: Backend) -> tuple[Backend, httpx.Response] | None:
            try:
                return b, await self.client.get(b.url + path, headers=headers, timeout=timeout)
            except httpx.HTTPError as e:
                logger.info("backend %s: GET %s failed: %r", b.url, path, e)
                return None

        return [a for a in await asyncio.gather(*(one(b) for b in backends)) if a is not None]

    def _relay(self, resp: httpx.Response, b: Backend, path: str, t0: float) -> StreamingResponse:
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
        is_sse = resp.headers.get("content-type", "").startswith("text/event-stream")
        started = [False]

        async def abandoned() -> None:  # the client left before the first chunk: _chunks' clean-up never ran
            b.in_flight -= 1
            self._done(b, path, CLIENT_GONE, t0)
            await resp.aclose()

        return RelayedStream(self._chunks(resp, b, path, t0, is_sse, started), started, abandoned,
                             status_code=resp.status_code, headers=headers)

    async def _chunks(self, resp: httpx.Response, b: Backend, path: str, t0: float,
                      is_sse: bool, started: list[bool]) -> AsyncIterator[bytes]:
        started[0] = True  # from here on the finally below does the clean-up
        # A client that leaves before the replica's last byte (or, of an event stream, its ``data: [DONE]``: a client
        # may hang up on it) went out is a 499.
        status = CLIENT_GONE
        tail = b"\n\n"
        try:
            async for chunk in resp.aiter_raw():
                if chunk:
                    tail = chunk[-2:]
                    yield chunk
                    if is_sse and chunk.endswith(b"data: [DONE]\n\n"):
                        status = str(resp.status_code)
            status = str(resp.status_code)
        except httpx.HTTPError as e:
            status = "stream_error"
            self.metrics.stream_errors.labels(b.url).inc()
            logger.warning("backend %s broke off a response to %s: %r", b.url, path, e)
            if not is_sse:
                # a body cut short must not reach the client as a whole one (a clean end of the chunked body would
                # make truncated JSON a 200): raising makes the server drop the connection before the last chunk
                raise
            sep = b"" if tail == b"\n\n" else b"\n\n"
            why = f"the backend serving this request failed mid-response ({type(e).__name__})"
            yield sep + stream_error_event(path, why)
        finally:  # bookkeeping first: a client that went away cancels this generator, and aclose may not finish
            b.in_flight -= 1
            self._done(b, path, status, t0)
            await resp.aclose()
