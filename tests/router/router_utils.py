"""Helpers for the router tests: fake replicas that misbehave on purpose, and a router run in-process.

* :class:`FakeBackend` — a minimal HTTP/1.1 server in its own thread: ``/health``, ``/v1/models``,
  ``/v1/models/{id}`` and ``/metrics`` answer like a replica (with ``api_key``, every route but ``/health``
  wants it, as ``pagoda serve --api-key``); a POST naming another ``model`` is a 404 ``model_not_found``;
  other POSTs answer according to ``mode`` (``ok``, ``hang``, ``garbage``, ``midstream`` (one SSE event, then
  the connection is cut), ``gated`` (one SSE event, the rest only after ``gate`` is set), ``held`` (a plain
  answer, only after ``gate`` is set), ``error500``); with ``store_responses``, a POST /v1/responses in mode ``ok``
  is kept as a replica with its Responses store on keeps it (``stored``: GET and DELETE /v1/responses/{id}, POST
  .../cancel);
* :class:`RouterThread` — ``pagoda.router.app.build_app`` under uvicorn in a thread, on a free port.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from server_utils import free_port  # noqa: E402

from pagoda.router.app import RouterConfig, build_app  # noqa: E402


class FakeBackend:
    def __init__(self, mode: str = "ok", model: str = "fake", running: float = 0, waiting: float = 0,
                 port: int | None = None, api_key: str | None = None, store_responses: bool = False) -> None:
        self.mode = mode
        self.store_responses = store_responses
        self.model = model
        self.api_key = api_key
        self.gets: list[tuple[str, str | None]] = []
        """(path, Authorization) of every GET but /health"""
        self.running, self.waiting = running, waiting
        self.posts: list[tuple[str, dict]] = []
        self.stored: dict[str, dict] = {}
        """responses this replica holds, by id (see the module doc)"""
        self.closed = 0
        """gated or held answers whose client (the router) hung up before the gate opened"""
        self.gate = threading.Event()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        self.gate.set()

        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            await self._answer(method, path, headers, body, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _response(status: int, body: bytes, ctype: str = "application/json") -> bytes:
        return (f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\n\r\n").encode() + body

    @staticmethod
    def _error(status: int, message: str, code: str, param: str | None = None) -> bytes:
        return FakeBackend._response(status, json.dumps({"error": {
            "message": message, "type": "invalid_request_error", "param": param, "code": code}}).encode())

    def _card(self) -> dict:
        return {"id": self.model, "object": "model", "owned_by": "fake"}

    async def _answer(self, method: str, path: str, headers: dict, body: bytes, reader: asyncio.StreamReader,
                      w: asyncio.StreamWriter) -> None:
        if method == "GET" and path != "/health":
            self.gets.append((path, headers.get("authorization")))
        if self.api_key and path != "/health" and headers.get("authorization") != f"Bearer {self.api_key}":
            w.write(self._error(401, "Incorrect API key provided.", "invalid_api_key"))
            await w.drain()
            return
        if path.startswith("/v1/responses/"):
            await self._stored(method, path, w)
            return
        if method == "GET":
            if path == "/health":
                w.write(self._response(200, b""))
            elif path == "/v1/models":
                w.write(self._response(200, json.dumps({"object": "list", "data": [self._card()]}).encode()))
            elif path.startswith("/v1/models/"):
                if path.removeprefix("/v1/models/") == self.model:
                    w.write(self._response(200, json.dumps(self._card()).encode()))
                else:
                    w.write(self._error(404, f"The model `{path[11:]}` does not exist.", "model_not_found", "model"))
            elif path == "/metrics":
                text = (f'vllm:num_requests_running{{model_name="{self.model}",engine="0"}} {self.running}\n'
                        f'vllm:num_requests_waiting{{model_name="{self.model}",engine="0"}} {self.waiting}\n'
                        f'vllm:kv_cache_usage_perc{{model_name="{self.model}",engine="0"}} 0.5\n')
                w.write(self._response(200, text.encode(), "text/plain"))
            else:
                w.write(self._response(404, b"{}"))
            await w.drain()
            return
        parsed = json.loads(body or b"{}")
        self.posts.append((path, {**parsed, "_auth": headers.get("authorization")}))
        if parsed.get("model", self.model) != self.model:
            w.write(self._error(404, f"The model `{parsed['model']}` does not exist.", "model_not_found", "model"))
            await w.drain()
            return
        await self._post(reader, w, path)

    async def _stored(self, method: str, path: str, w: asyncio.StreamWriter) -> None:
        rid, _, action = path.removeprefix("/v1/responses/").partition("?")[0].partition("/")
        if rid not in self.stored:
            w.write(self._error(404, f"Response with id {rid!r} not found.", "response_not_found"))
        elif method == "DELETE":
            del self.stored[rid]
            w.write(self._response(200, json.dumps({"id": rid, "object": "response", "deleted": True}).encode()))
        elif (method, action) in (("GET", ""), ("POST", "cancel")):
            w.write(self._response(200, json.dumps(self.stored[rid]).encode()))
        elif (method, action) == ("GET", "input_items"):
            w.write(self._response(200, json.dumps({"object": "list", "data": [], "port": self.port}).encode()))
        else:
            w.write(self._error(405, "Method Not Allowed", "method_not_allowed"))
        await w.drain()

    async def _post(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter, path: str = "") -> None:
        mode = self.mode
        if mode == "hang":
            await asyncio.sleep(3600)
        elif mode == "garbage":
            w.write(b"this is not HTTP at all\r\n\r\n")
        elif mode == "held":
            while not self.gate.is_set():
                if w.transport.is_closing() or reader.at_eof():  # the router hung up
                    self.closed += 1
                    return
                await asyncio.sleep(0.01)
            w.write(self._response(200, json.dumps({"ok": True, "port": self.port}).encode()))
        elif mode == "error500":
            w.write(self._response(500, json.dumps({"error": {"message": "boom", "code": 500}}).encode()))
        elif mode in ("midstream", "gated"):
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                    b"connection: close\r\n\r\n")
            w.write(self._chunk(b'data: {"n": 1}\n\n'))
            await w.drain()
            if mode == "midstream":
                w.transport.abort()  # the connection is cut: no final chunk
                return
            while not self.gate.is_set():
                if w.transport.is_closing() or reader.at_eof():  # the router hung up
                    self.closed += 1
                    return
                await asyncio.sleep(0.01)
            w.write(self._chunk(b'data: {"n": 2}\n\n') + self._chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        elif path == "/v1/responses" and self.store_responses:
            rid = f"resp_{self.port}_{len(self.stored)}"
            self.stored[rid] = {"id": rid, "object": "response", "port": self.port,
                                "previous_response_id": self.posts[-1][1].get("previous_response_id")}
            w.write(self._response(200, json.dumps(self.stored[rid]).encode()))
        else:
            w.write(self._response(200, json.dumps({"ok": True, "port": self.port}).encode()))
        await w.drain()

    @staticmethod
    def _chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class RouterThread:
    """The router app under uvicorn in a background thread."""

    def __init__(self, cfg: RouterConfig) -> None:
        self.cfg = cfg
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = build_app(cfg)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("router did not start")
            time.sleep(0.02)

    @property
    def state(self):
        return self.app.state.router

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def post(self, path: str, body: dict, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=kw.pop("timeout", 60), **kw)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the router's own samples named ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in httpx.get(self.url + "/metrics", headers=self._auth(), timeout=10).text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cfg.api_key}"} if self.cfg.api_key else {}


def router_config(urls: list[str], logic: str = "roundrobin", **kw) -> RouterConfig:
    from pagoda.router.discovery import StaticSource
    from pagoda.router.policies import make_policy

    policy = make_policy(logic, kw.pop("session_key", None), kw.pop("prefix_chunk_size", 32))
    return RouterConfig(policy=policy, sources=kw.pop("sources", [StaticSource(urls)]),
                        health_check_interval_s=kw.pop("health_check_interval_s", 0.2),
                        engine_stats_interval_s=kw.pop("engine_stats_interval_s", 0.2), **kw)
