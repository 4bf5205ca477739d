"""Router overhead: added latency per request and throughput ceiling of ``pagoda router``.

    python benchmarks/router_bench.py [--backend URL --model NAME] [--requests 300] [--concurrency 32]

Without ``--backend`` a fake replica is started (a raw ASGI app under uvicorn, in its own process, that
answers every POST at once with a fixed completion), so the figures are the router's own cost. A
``pagoda router`` subprocess is started in front of the backend, and on the same client:

* latency: ``--requests`` pairs of sequential tiny non-streaming completions, one direct and one through the
  router in a seeded random order, ``--gap`` seconds apart (drift of the machine hits both alike, and
  neither always follows the other: a replica that has just answered answers the next one faster):
  p50 / p99 of each, and the difference;
* router CPU: the router process's CPU time (user + system) per request of the latency phase — a figure
  that machine load does not inflate the way it inflates wall-clock latency;
* throughput: ``--concurrency`` clients for ``--duration`` seconds, through the router and direct:
  requests/s (the direct figure is the ceiling of this client + backend: the router's ceiling can only be
  read against it).

Prints one JSON object (``--output-json`` also writes it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
COMPLETION = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": "fake",
              "choices": [{"index": 0, "text": " ok", "finish_reason": "length", "logprobs": None}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def fake_app(scope, receive, send) -> None:
    """The fake replica: /health, /v1/models, /metrics, and an instant answer to any POST."""
    if scope["type"] != "http":
        return
    while scope["method"] == "POST":
        msg = await receive()
        if not msg.get("more_body"):
            break
    path = scope["path"]
    if path == "/v1/models":
        body = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode()
    elif path == "/metrics":
        body = b'vllm:num_requests_running{model_name="fake"} 0\nvllm:num_requests_waiting{model_name="fake"} 0\n'
    elif path == "/health":
        body = b""
    else:
        body = json.dumps(COMPLETION).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def latency(direct: str, routed: str, body: dict, n: int, headers: dict, router_pid: int, gap: float) -> dict:
    times: dict[str, list[float]] = {"direct": [], "router": []}
    with httpx.Client(timeout=60, headers=headers) as c:
        for url in (direct, routed):  # warm connections and caches
            for _ in range(5):
                c.post(url + "/v1/completions", json=body).raise_for_status()
        cpu0 = cpu_seconds(router_pid)
        order = random.Random(0)
        for _ in range(n):
            pair = [("direct", direct), ("router", routed)]
            order.shuffle(pair)  # neither side always runs right after the other (a hot replica answers faster)
            for name, url in pair:
                time.sleep(gap)
                t = time.perf_counter()
                c.post(url + "/v1/completions", json=body).raise_for_status()
                times[name].append(time.perf_counter() - t)
        cpu = cpu_seconds(router_pid) - cpu0
    out = {f"{k}_p{q}_ms": round(1e3 * pct(v, q), 3) for k, v in times.items() for q in (50, 99)}
    out["added_p50_ms"] = round(out["router_p50_ms"] - out["direct_p50_ms"], 3)
    out["added_p99_ms"] = round(out["router_p99_ms"] - out["direct_p99_ms"], 3)
    out["router_cpu_ms_per_request"] = round(1e3 * cpu / n, 3)  # includes its health probes (every 5 s)
    return out


async def throughput(url: str, body: dict, concurrency: int, duration: float, headers: dict) -> float:
    done = 0
    stop = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, headers=headers, limits=limits) as c:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                (await c.post(url + "/v1/completions", json=body)).raise_for_status()
                done += 1

        t = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default=None, help="an existing replica (default: start the fake one)")
    ap.add_argument("--model", default="fake")
    ap.add_argument("--api-key", default=None, help="the replica's key (the router gets the same one)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between two timed requests")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--routing-logic", default="roundrobin")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--output-json", default=None)
    ap.add_argument("--serve-fake", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_fake:
        import uvicorn

        uvicorn.run(fake_app, host="127.0.0.1", port=args.serve_fake, log_level="warning", access_log=False)
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    try:
        backend = args.backend
        if backend is None:
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, __file__, "--serve-fake", str(port)], env=env))
            backend = f"http://127.0.0.1:{port}"
            wait_ready(backend, procs[-1])
        rport = free_port()
        cmd = [sys.executable, "-m", "pagoda", "router", "--backend", backend, "--port", str(rport),
               "--routing-logic", args.routing_logic]
        if args.api_key:
            cmd += ["--api-key", args.api_key]
        procs.append(subprocess.Popen(cmd, env=env))
        routed = f"http://127.0.0.1:{rport}"
        wait_ready(routed, procs[-1])
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        body = {"model": args.model, "prompt": "hi", "max_tokens": 1, "temperature": 0}
        result: dict = {"backend": args.backend or "fake", "routing_logic": args.routing_logic,
                        "requests": args.requests}
        result.update(latency(backend, routed, body, args.requests, headers, procs[-1].pid, args.gap))
        if not args.skip_throughput:
            result["concurrency"] = args.concurrency
            result["router_rps"] = round(asyncio.run(throughput(routed, body, args.concurrency, args.duration,
                                                                headers)), 1)
            result["direct_rps"] = round(asyncio.run(throughput(backend, body, args.concurrency, args.duration,
                                                                headers)), 1)
        print(json.dumps(result, indent=2))
        if args.output_json:
            Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(20)


if __name__ == "__main__":
    main()
