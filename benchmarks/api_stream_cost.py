"""CPU cost of the API server process per streamed request and per output token, on the CPU, no model compute
(``--no-stream``: per unstreamed request).

The real ``pagoda serve`` (FastAPI app, AsyncLLM, output processor, incremental detokenizer, serving
classes) runs in its own process, with a *stub engine core* in place of the real one: a process that
speaks the core's ZMQ protocol (:mod:`pagoda.engine.messages`), admits up to ``--max-num-seqs``
requests and emits one token for every running request each ``--step-ms`` (a fixed step time, like
a GPU's decode step), from a fixed English token stream of the default model's tokenizer (SmolLM2),
until ``max_tokens``. The load generator (this process) sends ``--num-prompts`` streaming requests
under ``--max-concurrency`` with httpx, shaped like ``pagoda bench serve``'s: a ~``--input-len``-token
prompt, ``max_tokens`` ``--output-len``, ``ignore_eos``, ``stream_options`` with
``continuous_usage_stats`` (usage on every chunk). The server's CPU seconds (user + system, all
threads, ``/proc``) are read just before and after the timed run, as ``pagoda bench serve`` does
(:mod:`pagoda.benchmarks.server_process`), so "API server CPU ms per output token" is the same
figure as the H200 runs report.

    PYTHONPATH=. python benchmarks/api_stream_cost.py [--endpoint /v1/chat/completions] \
        [--num-prompts 400 --max-concurrency 64 --step-ms 20] [--profile /tmp/api.prof]

``--profile`` runs cProfile in the server for the timed run only and prints its top entries. Figures
also depend on how many tokens each chunk carries (a server that falls behind coalesces tokens), so the
report gives chunks and tokens per chunk too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

TEXT = (
    "The history of the printing press is a story of small improvements adding up. Early printers cast "
    "each letter by hand, set lines of type into a frame, and pressed paper against inked metal. Over "
    "decades, workshops learned to mix better inks, to build stronger presses, and to train apprentices "
    "who could set a page in an hour. Books became cheaper; more people learned to read; ideas moved "
    "faster than ever before. Here is a short list of the main steps:\n\n1. Casting type.\n2. Setting "
    "lines.\n3. Inking and pressing.\n\nEach step was refined by people whose names are mostly forgotten, "
    "but whose work shaped the modern world. Would you like to know more about any of them?\n"
)


# ----------------------------------------------------------------------------------- stub core
def start_stub_core(settings: dict[str, Any]) -> Any:
    """A replacement for ``pagoda.engine.core_proc.start_core_process`` that spawns the stub core."""
    import multiprocessing

    readers: list[Any] = []  # the pipes' read ends, kept open: the front end sends the engine arguments there

    def start(input_addr: str, output_addr: str, log_level: int = 0) -> tuple[Any, Any]:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=stub_core_main, name="stub-engine-core",
                           args=(settings, input_addr, output_addr, os.getpid()), daemon=True)
        proc.start()
        recv, send = ctx.Pipe(duplex=False)
        readers.append(recv)
        return proc, send

    return start


class _StubCore:
    def __init__(self, settings: dict[str, Any], in_sock: Any, out_sock: Any) -> None:
        from pagoda.engine.messages import encoder, input_decoder

        self.s = settings
        self.tokens: list[int] = settings["tokens"]
        self.in_sock, self.out_sock = in_sock, out_sock
        self.enc, self.dec = encoder(), input_decoder()
        self.waiting: deque[Any] = deque()
        self.running: dict[str, list[Any]] = {}  # id -> [request, tokens sent, arrival]
        self.done = False

    def drain(self, timeout_ms: int) -> None:
        import zmq

        from pagoda.engine.messages import AbortRequests, AddRequest, FinishRequests, Shutdown

        if not self.in_sock.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                msg = self.dec.decode(self.in_sock.recv(flags=zmq.NOBLOCK))
            except zmq.Again:
                return
            if isinstance(msg, AddRequest):
                self.waiting.append((msg.request, time.monotonic()))
            elif isinstance(msg, AbortRequests | FinishRequests):
                gone = set(msg.request_ids)
                for rid in gone:
                    self.running.pop(rid, None)
                self.waiting = deque(w for w in self.waiting if w[0].request_id not in gone)
            elif isinstance(msg, Shutdown):
                self.done = True
                return

    def step(self) -> None:
        from pagoda.engine.messages import (
            EngineCoreOutput,
            EngineCoreOutputs,
            QueueTime,
            SchedulerStats,
            StepOutputs,
            TokenLogprobs,
        )

        scheduled = []
        while self.waiting and len(self.running) < self.s["max_num_seqs"]:
            req, t0 = self.waiting.popleft()
            self.running[req.request_id] = [req, 0]
            scheduled.append(QueueTime(req.request_id, time.monotonic() - t0, time.time()))
        outs = []
        toks = self.tokens
        for rid, st in list(self.running.items()):
            req, k = st
            tok = toks[(hash(rid) % 997 + k) % len(toks)]
            st[1] = k + 1
            lps = None
            if req.sampling_params.logprobs is not None:
                top = [toks[(i * 7 + k) % len(toks)] for i in range(max(1, req.sampling_params.logprobs))]
                lps = [TokenLogprobs(-0.25, 1, top, [-0.25 - 0.5 * i for i in range(len(top))])]
            fin = "length" if k + 1 >= req.max_tokens else None
            outs.append(EngineCoreOutput(rid, [tok], lps, finish_reason=fin))
            if fin:
                del self.running[rid]
        stats = SchedulerStats(num_running=len(self.running), num_waiting=len(self.waiting),
                               num_generation_tokens=len(outs))
        self.out_sock.send(self.enc.encode(StepOutputs(EngineCoreOutputs(outs, stats), scheduled)))

    def run(self) -> None:
        from pagoda.engine.messages import Heartbeat, SchedulerStats

        period = self.s["step_ms"] / 1000
        next_step = time.monotonic()
        last_beat = 0.0
        while not self.done:
            busy = bool(self.running or self.waiting)
            now = time.monotonic()
            self.drain(max(0, int((next_step - now) * 1000)) if busy else 200)
            if os.getppid() != self.s["parent_pid"]:
                return
            now = time.monotonic()
            if (self.running or self.waiting) and now >= next_step:
                self.step()
                next_step = max(next_step + period, now)  # a fixed step time, never a burst to catch up
            elif not (self.running or self.waiting) and now - last_beat > 1.0:
                self.out_sock.send(self.enc.encode(Heartbeat(SchedulerStats())))
                last_beat = now
                next_step = now


def stub_core_main(settings: dict[str, Any], input_addr: str, output_addr: str, parent_pid: int) -> None:
    """Entry point of the stub engine-core process."""
    import zmq

    from pagoda.engine.messages import AdmissionLimits, Ready, encoder

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    in_sock = ctx.socket(zmq.PULL)
    in_sock.connect(input_addr)
    out_sock = ctx.socket(zmq.PUSH)
    out_sock.setsockopt(zmq.SNDHWM, 0)
    out_sock.connect(output_addr)
    limits = AdmissionLimits(max_model_len=settings["max_model_len"], vocab_size=settings["vocab_size"],
                             max_logprobs=20, kv_cache_tokens=10**7, max_num_batched_tokens=8192,
                             enable_chunked_prefill=True)
    out_sock.send(encoder().encode(Ready(os.getpid(), 10**5, 16, limits, 0.0)))
    _StubCore({**settings, "parent_pid": parent_pid}, in_sock, out_sock).run()
    os._exit(0)


# -------------------------------------------------------------------------------------- server
def serve(settings_path: str, profile: str | None, http: str, loop: str, serve_argv: list[str]) -> None:
    """The API server process: ``pagoda serve`` with the stub core; SIGUSR1 starts cProfile, SIGUSR2 dumps it."""
    import uvicorn

    from pagoda.engine import core_engines
    from pagoda.entrypoints.openai import api_server

    config_init = uvicorn.Config.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:  # --http / --loop: uvicorn's choice, for A/B runs
        config_init(self, *a, **{**kw, "http": http, "loop": loop})

    uvicorn.Config.__init__ = init  # type: ignore[method-assign]

    settings = json.loads(Path(settings_path).read_text())
    core_engines.start_core_process = start_stub_core(settings)
    if profile:
        import cProfile

        prof = cProfile.Profile()
        signal.signal(signal.SIGUSR1, lambda *_: prof.enable())

        def dump(*_: Any) -> None:
            prof.disable()
            prof.dump_stats(profile)

        signal.signal(signal.SIGUSR2, dump)
    api_server.main(serve_argv)


# ------------------------------------------------------------------------------- load generator
def _prompt(tok: Any, rng: random.Random, n_tokens: int) -> str:
    words = TEXT.split()
    out: list[str] = []
    while len(tok.encode(" ".join(out), add_special_tokens=False)) < n_tokens:
        out.extend(rng.choice(words) for _ in range(8))
    return " ".join(out)


async def _one(client: Any, url: str, body: dict[str, Any], stats: dict[str, Any]) -> None:
    if not body["stream"]:  # one JSON answer
        r = await client.post(url, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]!r}")
        stats["done"] += 1
        stats["tokens"] += r.json()["usage"]["completion_tokens"]
        return
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                stats["done"] += 1
                continue
            obj = json.loads(data)
            if "error" in obj:
                raise RuntimeError(str(obj["error"]))
            if obj.get("choices"):
                stats["chunks"] += 1
            elif obj.get("usage"):
                stats["tokens"] += obj["usage"]["completion_tokens"]


async def _drive(base: str, bodies: list[dict[str, Any]], endpoint: str, concurrency: int) -> dict[str, Any]:
    import httpx

    stats: dict[str, Any] = {"chunks": 0, "tokens": 0, "done": 0, "failed": 0, "error": None}
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        async def go(b: dict[str, Any]) -> None:
            async with sem:
                try:
                    await _one(client, endpoint, b, stats)
                except Exception as e:  # counted and reported; the figures then cover fewer requests
                    stats["failed"] += 1
                    stats["error"] = stats["error"] or f"{type(e).__name__}: {e}"

        await asyncio.gather(*(go(b) for b in bodies))
    return stats


def _bodies(args: argparse.Namespace, tok: Any, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    chat = args.endpoint.endswith("chat/completions")
    bodies = []
    for i in range(n):
        b: dict[str, Any] = {"model": "bench", "max_tokens": args.output_len, "temperature": 0.0, "stream": True,
                             "ignore_eos": True, "request_id": f"bench-{seed}-{i}",
                             "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        if args.no_stream:
            b["stream"] = False
            del b["stream_options"]
        p = _prompt(tok, rng, args.input_len)
        if chat:
            b["messages"] = [{"role": "user", "content": p}]
        else:
            b["prompt"] = p
        if args.logprobs is not None:
            if chat:
                b["logprobs"], b["top_logprobs"] = True, args.logprobs
            else:
                b["logprobs"] = args.logprobs
        if args.n > 1:
            b["n"] = args.n
        bodies.append(b)
    return bodies


def _user_sys(pid: int) -> tuple[float, float]:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tck, int(f[12]) / tck


def _start_py_spy(path: str, pid: int) -> Any:
    import shutil
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proc = subprocess.Popen([exe, "record", "--format", "raw", "-o", path, "-r", "200", "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return proc


def _print_profile(path: str, top: int) -> None:
    import pstats

    st = pstats.Stats(path)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default="/v1/completions", choices=["/v1/completions", "/v1/chat/completions"])
    p.add_argument("--num-prompts", type=int, default=400)
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--input-len", type=int, default=194)
    p.add_argument("--output-len", type=int, default=168)
    p.add_argument("--logprobs", type=int, default=None, help="ask for this many logprobs per token")
    p.add_argument("--n", type=int, default=1, help="samples per request")
    p.add_argument("--no-stream", action="store_true", help="unstreamed requests (one JSON answer each; the chunk "
                   "figures then count answers)")
    p.add_argument("--step-ms", type=float, default=20.0, help="the stub core's step time")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--warmup", type=int, default=16, help="requests sent before the timed run")
    p.add_argument("--profile", default=None, help="cProfile the server during the timed run into this file")
    p.add_argument("--profile-top", type=int, default=40)
    p.add_argument("--py-spy", default=None, help="sample the server with py-spy during the timed run into this file "
                   "(collapsed stacks; py-spy must be on PATH)")
    p.add_argument("--port", type=int, default=8033)
    p.add_argument("--serve-flags", default="", help="more `pagoda serve` flags, e.g. '--stream-interval 4'")
    p.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"], help="uvicorn's HTTP protocol")
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="uvicorn's event loop")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # internal: run as the server
    args, rest = p.parse_known_args()
    if args.serve:
        serve(args.serve, args.profile, args.http, args.loop, [*rest, "--port", str(args.port)])
        return
    run_bench(args)


def run_bench(args: argparse.Namespace) -> None:
    if "--api-server-count" in args.serve_flags or "-asc" in args.serve_flags.split():
        raise SystemExit("--serve-flags: the stub core serves one API server process; --api-server-count is measured "
                         "against a real engine core (pagoda bench serve)")
    from transformers import AutoTokenizer

    from pagoda.benchmarks.server_process import CpuSnapshot, LaunchedServer, cpu_report
    from pagoda.models.model_files import ensure_default_model

    model = str(ensure_default_model())  # fetched on first use, as `pagoda serve` does
    tok = AutoTokenizer.from_pretrained(model)
    cfg = json.loads((Path(model) / "config.json").read_text())
    settings = {"tokens": tok.encode(TEXT * 2, add_special_tokens=False), "step_ms": args.step_ms,
                "max_num_seqs": args.max_num_seqs, "vocab_size": cfg["vocab_size"],
                "max_model_len": cfg["max_position_embeddings"]}
    fd, settings_path = tempfile.mkstemp(suffix=".json", prefix="api-stream-cost-")
    os.close(fd)
    Path(settings_path).write_text(json.dumps(settings))
    prof = ["--profile", args.profile] if args.profile else []
    prof += ["--http", args.http, "--loop", args.loop]
    cmd = (f"{sys.executable} {__file__} --serve {settings_path} {' '.join(prof)} --log-level WARNING "
           f"--model {model} --served-model-name bench --port {args.port} --uvicorn-log-level warning "
           f"--disable-uvicorn-access-log --disable-log-requests --max-num-seqs {args.max_num_seqs} {args.serve_flags}")
    base = f"http://127.0.0.1:{args.port}"
    server = LaunchedServer(cmd, base_url=base)
    try:
        server.wait_ready(base, 300)
        asyncio.run(_drive(base, _bodies(args, tok, args.warmup, 1), args.endpoint, args.max_concurrency))
        bodies = _bodies(args, tok, args.num_prompts, 0)
        if args.profile:
            os.kill(server.pid, signal.SIGUSR1)
        spy = _start_py_spy(args.py_spy, server.pid) if args.py_spy else None
        before, c0, t0 = CpuSnapshot.take(server.pid), time.process_time(), time.perf_counter()
        us0 = _user_sys(server.pid)
        stats = asyncio.run(_drive(base, bodies, args.endpoint, args.max_concurrency))
        after, c1, t1 = CpuSnapshot.take(server.pid), time.process_time(), time.perf_counter()
        us1 = _user_sys(server.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        if args.profile:
            os.kill(server.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 60
            while not Path(args.profile).exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
    finally:
        server_stop(server)
        os.unlink(settings_path)
    rep = cpu_report(before, after, stats["tokens"], args.num_prompts - stats["failed"])
    print(f"endpoint {args.endpoint}, {args.num_prompts} requests x {args.output_len} tokens (n={args.n}, "
          f"logprobs={args.logprobs}), {args.max_concurrency} concurrent, stub step {args.step_ms:g} ms, "
          f"uvicorn http {args.http} loop {args.loop}")
    if stats["failed"]:
        print(f"  {stats['failed']} requests failed (first: {stats['error']}); the figures cover the others")
    print(f"  wall {t1 - t0:.2f} s, output tokens {stats['tokens']}, chunks {stats['chunks']} "
          f"({stats['tokens'] / max(1, stats['chunks']):.2f} tokens per chunk), load generator CPU {c1 - c0:.2f} s")
    print(f"  API server CPU {rep['api_server_cpu_s']:.2f} s = {rep['api_server_cpu_s'] / (t1 - t0):.2f} of a core; "
          f"user {us1[0] - us0[0]:.2f} s + system {us1[1] - us0[1]:.2f} s; "
          f"stub core CPU {rep['engine_core_cpu_s']:.2f} s")
    print(f"  API server CPU ms per request:      {rep['api_server_cpu_ms_per_request']:.3f}")
    print(f"  API server CPU ms per output token: {rep['api_server_cpu_ms_per_output_token']:.4f}")
    if not args.no_stream:
        print(f"  API server CPU ms per chunk:        {1000 * rep['api_server_cpu_s'] / max(1, stats['chunks']):.4f}")
    if args.profile:
        _print_profile(args.profile, args.profile_top)


def server_stop(server: Any) -> None:
    with contextlib.suppress(Exception):
        server.stop()


if __name__ == "__main__":
    main()
