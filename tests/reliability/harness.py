"""Shared harness of the reliability battery (tests/reliability).

* ``FULL``: ``PAGODA_RELIABILITY_FULL=1`` runs the full battery (the issue's durations and
  counts); otherwise the CI subset runs (scaled down so the directory stays under 5 min on
  2 cores). ``scale(ci, full)`` picks a figure by mode.
* ``start_server``: a real ``pagoda serve`` subprocess on the tiny random Llama
  (tests/server/server_utils.RemoteServer).
* ``Ledger`` + ``stream_request`` / ``plain_request``: every request the scenario sends is
  recorded as ``ok``, ``error <status>`` (a clear HTTP error, or an error event in the stream
  followed by ``[DONE]``) or ``lost`` (a hang, a reset connection, a stream without its final
  chunk and ``[DONE]``); abandoned on purpose counts as ``abandoned``.
* ``Baseline`` / ``assert_recovered``: the checks every scenario ends with.
* ``record``: per-scenario figures, appended to ``$PAGODA_RELIABILITY_REPORT`` (JSON lines)
  when set; docs/reliability.md is written from them.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "server"))
sys.path.insert(0, str(HERE.parent))

from server_utils import API_KEY, MODEL, RemoteServer, wait_for  # noqa: E402

from pagoda import envs  # noqa: E402

FULL = envs.reliability_full()
REPORT = envs.reliability_report()

HANG_GUARD_S = 60.0
"""How long a scenario waits for a state it expects (blocks freed, a server answering) before it calls it a hang.
A guard against hanging forever, never a speed limit: how long the wait took is recorded as a figure."""

CANARY = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 24, "temperature": 0, "ignore_eos": True}


def scale(ci, full):
    return full if FULL else ci


def mixed_bodies(n: int, max_tokens: int, prompt: str, message: str) -> list[tuple[str, dict, bool]]:
    """``n`` greedy requests ``(path, body, stream)`` that ignore EOS: odd ``i`` completions of
    ``prompt.format(i=i)``, even ``i`` chats saying ``message.format(i=i)``; half of each kind
    streamed (completions at ``i % 4 == 1``, chats at ``i % 4 == 0``)."""
    out = []
    for i in range(n):
        common = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
        if i % 2:
            out.append(("/v1/completions", {**common, "prompt": prompt.format(i=i)}, i % 4 == 1))
        else:
            out.append(("/v1/chat/completions",
                        {**common, "messages": [{"role": "user", "content": message.format(i=i)}]}, i % 4 == 0))
    return out


def start_server(model_dir: Path, *args: str, api_key: str | None = API_KEY, **kw) -> RemoteServer:
    # PAGODA_RELIABILITY_SERVER_ARGS: extra flags for every server of the battery (e.g.
    # "--async-scheduling", to run the battery on the CPU as CUDA servers run by default).
    extra = shlex.split(envs.reliability_server_args())
    return RemoteServer(str(model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                         "--max-num-seqs", "64", *args, *extra], api_key=api_key, **kw)


# ------------------------------------------------------------------------------ ledger
@dataclass
class Ledger:
    outcomes: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # completed requests, seconds
    itls: list[float] = field(default_factory=list)  # gaps between stream chunks, seconds
    lost_detail: list[str] = field(default_factory=list)

    def ok(self, latency: float) -> None:
        self.outcomes.append("ok")
        self.latencies.append(latency)

    def error(self, status: int) -> None:
        self.outcomes.append(f"error {status}")

    def lost(self, why: str) -> None:
        self.outcomes.append("lost")
        self.lost_detail.append(why)

    def abandoned(self) -> None:
        self.outcomes.append("abandoned")

    @property
    def n_lost(self) -> int:
        return self.outcomes.count("lost")

    def by_outcome(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o] = out.get(o, 0) + 1
        return out

    def p99(self) -> float | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))]

    def assert_nothing_lost(self) -> None:
        assert self.n_lost == 0, f"{self.n_lost} lost requests: {self.lost_detail[:5]} ({self.by_outcome()})"


def _is_error_shape(body) -> bool:
    return (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict)
            and {"message", "type", "param", "code"} <= set(body["error"]))


async def sse_lines(resp: httpx.Response):
    """SSE lines split on CR/LF only (httpx's aiter_lines also splits on U+0085/U+2028, which
    JSON leaves unescaped inside strings)."""
    buf = b""
    async for chunk in resp.aiter_bytes():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            yield ln.rstrip(b"\r").decode("utf-8")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8")


async def _record_refusal(resp: httpx.Response, ledger: Ledger) -> None:
    """A non-200 answer to a stream request: an error if it has an OpenAI error body, else lost."""
    data = await resp.aread()
    try:
        ok_shape = _is_error_shape(json.loads(data))
    except ValueError:
        ok_shape = False
    if ok_shape:
        ledger.error(resp.status_code)
    else:
        ledger.lost(f"HTTP {resp.status_code} without an error body: {data[:200]!r}")


def _error_event_status(err: dict) -> int:
    """The status an in-stream error event stands for: its integer code, 503 for an unavailable engine."""
    if isinstance(err.get("type"), str) and "unavailable" in err["type"]:
        return 503
    return int(err.get("code") or 0) if isinstance(err.get("code"), int) else 500


def _chunk_text(chunk: dict) -> tuple[list[str], bool]:
    """A stream chunk's text per choice (completions or chat), and whether any choice finished."""
    pieces, finished = [], False
    for ch in chunk.get("choices", []):
        pieces.append(ch.get("text") or (ch.get("delta") or {}).get("content") or "")
        if ch.get("finish_reason"):
            finished = True
    return pieces, finished


async def stream_request(client: httpx.AsyncClient, srv: RemoteServer, path: str, body: dict, ledger: Ledger,
                         abandon_after: int | None = None, timeout: float = 120.0, text_out: list | None = None
                         ) -> None:
    """One streaming request; checks it ends with a final chunk (finish_reason) and ``[DONE]``.

    ``abandon_after``: close the connection after that many data events (a client going away).
    """
    t0 = time.monotonic()
    last = None
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", srv.url + path, json={**body, "stream": True},
                                     headers=srv.headers) as resp:
                if resp.status_code != 200:
                    await _record_refusal(resp, ledger)
                    return
                events = 0
                finished = done = False
                error_status = None
                text = []
                async for line in sse_lines(resp):
                    if not line.startswith("data: "):
                        continue
                    now = time.monotonic()
                    if last is not None and not finished:
                        ledger.itls.append(now - last)
                    last = now
                    events += 1
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        error_status = _error_event_status(chunk["error"])
                        continue
                    pieces, final = _chunk_text(chunk)
                    text.extend(pieces)
                    finished = finished or final
                    if abandon_after is not None and events >= abandon_after:
                        ledger.abandoned()
                        return
                if done and error_status is not None:
                    ledger.error(error_status)
                elif done and finished:
                    ledger.ok(time.monotonic() - t0)
                    if text_out is not None:
                        text_out.append("".join(text))
                elif abandon_after is not None:
                    ledger.lost(f"stream ended after {events} events, before the abandon point")
                else:
                    ledger.lost(f"stream ended without {'[DONE]' if not done else 'a final chunk'}")
    except TimeoutError:
        ledger.lost(f"hang: no end after {timeout} s")
    except httpx.HTTPError as e:
        ledger.lost(f"{type(e).__name__}: {e}")


async def plain_request(client: httpx.AsyncClient, srv: RemoteServer, path: str, body: dict, ledger: Ledger,
                        abandon_after_s: float | None = None, timeout: float = 120.0,
                        text_out: list | None = None) -> None:
    """One non-streaming request; ``abandon_after_s``: drop the connection after that long."""
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(abandon_after_s if abandon_after_s is not None else timeout):
            resp = await client.post(srv.url + path, json={**body, "stream": False}, headers=srv.headers)
    except TimeoutError:
        if abandon_after_s is not None:
            ledger.abandoned()
        else:
            ledger.lost(f"hang: no answer after {timeout} s")
        return
    except httpx.HTTPError as e:
        ledger.lost(f"{type(e).__name__}: {e}")
        return
    try:
        data = resp.json()
    except ValueError:
        ledger.lost(f"HTTP {resp.status_code} with a body that is not JSON")
        return
    if resp.status_code == 200 and all(c.get("finish_reason") for c in data.get("choices", [{}])):
        ledger.ok(time.monotonic() - t0)
        if text_out is not None:
            ch = data["choices"][0]
            text_out.append(ch.get("text") if "text" in ch else ch["message"]["content"])
    elif resp.status_code >= 400 and _is_error_shape(data):
        ledger.error(resp.status_code)
    else:
        ledger.lost(f"HTTP {resp.status_code} with an unexpected body: {str(data)[:200]}")


def async_client(limit: int = 256, timeout: float = 120.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=limit,
                                                                  max_keepalive_connections=limit))


# ---------------------------------------------------------------------------- recovery
def canary(srv: RemoteServer) -> str:
    r = srv.post("/v1/completions", CANARY, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def engine_idle(srv: RemoteServer) -> tuple[float, float, float]:
    m = srv.metrics()

    def total(prefix: str) -> float:
        return sum(v for k, v in m.items() if k.startswith(prefix))

    return (total("pagoda:num_requests_running"), total("pagoda:num_requests_waiting"),
            total("pagoda:kv_cache_usage_perc"))


@dataclass
class Baseline:
    rss: int
    threads: int
    fds: int
    canary_text: str


def process_figures(srv: RemoteServer) -> tuple[int, int, int]:
    p = psutil.Process(srv.proc.pid)
    return p.memory_info().rss, p.num_threads(), p.num_fds()


def take_baseline(srv: RemoteServer) -> Baseline:
    """Warm the server up (both endpoints, streaming and not, a few at once), then measure it."""

    async def warm() -> None:
        ledger = Ledger()
        async with async_client() as c:
            jobs = []
            for i in range(8):
                body = {"model": MODEL, "prompt": f"warm up {i}", "max_tokens": 8, "temperature": 0}
                chat = {"model": MODEL, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 8}
                jobs += [stream_request(c, srv, "/v1/completions", body, ledger),
                         plain_request(c, srv, "/v1/chat/completions", chat, ledger)]
            await asyncio.gather(*jobs)
        ledger.assert_nothing_lost()

    asyncio.run(warm())
    text = canary(srv)
    assert wait_for(lambda: engine_idle(srv) == (0, 0, 0), timeout=10)
    time.sleep(0.5)
    rss, threads, fds = process_figures(srv)
    return Baseline(rss, threads, fds, text)


def assert_recovered(srv: RemoteServer, base: Baseline, ledger: Ledger | None = None,
                     idle_within: float = 10.0) -> dict:
    """The end-of-scenario checks; returns the figures measured (for ``record``)."""
    if ledger is not None:
        ledger.assert_nothing_lost()
    t0 = time.monotonic()
    assert wait_for(lambda: engine_idle(srv) == (0, 0, 0), timeout=idle_within), \
        f"engine not idle after {idle_within} s: running, waiting, kv usage = {engine_idle(srv)}"
    idle_s = time.monotonic() - t0
    r = httpx.get(srv.url + "/health", timeout=5)
    assert r.status_code == 200, r.text
    assert canary(srv) == base.canary_text, "the canary's greedy text changed"
    # Threads and open files: back to baseline (connections close asynchronously: allow a few s).
    assert wait_for(lambda: process_figures(srv)[1] <= base.threads and process_figures(srv)[2] <= base.fds,
                    timeout=10, interval=0.2), \
        f"threads/fds {process_figures(srv)[1:]} vs baseline {(base.threads, base.fds)}"
    rss, threads, fds = process_figures(srv)
    limit = base.rss * 1.10 + 30 * 2**20
    assert rss <= limit, f"RSS {rss / 2**20:.0f} MB > baseline {base.rss / 2**20:.0f} MB + 10% + 30 MB"
    return {"rss_before_mb": round(base.rss / 2**20, 1), "rss_after_mb": round(rss / 2**20, 1),
            "threads": [base.threads, threads], "fds": [base.fds, fds], "idle_after_s": round(idle_s, 2)}


def record(scenario: str, ledger: Ledger | None = None, **extra) -> dict:
    row = {"scenario": scenario, "mode": "full" if FULL else "ci"}
    if ledger is not None:
        p99 = ledger.p99()
        row.update(requests=len(ledger.outcomes), lost=ledger.n_lost, outcomes=ledger.by_outcome(),
                   p99_latency_s=None if p99 is None else round(p99, 3))
    row.update(extra)
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return row
