"""`pagoda serve --data-parallel-size 2` on the CPU: two engine-core replicas behind one server.

* concurrent requests through the OpenAI client give DP=1's greedy tokens (top-5 rule) and both
  replicas serve some of them (the per-replica ``engine`` label of the metrics); a prefix-cache reset
  reaches both;
* a request that leaves early is aborted on the replica that runs it (its blocks freed there, the
  other replica untouched);
* a replica whose process dies is the engine's death: the request in flight ends with an error
  naming the replica, /health and new requests answer 503.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import pytest
from server_utils import MODEL, RemoteServer, wait_for

PROMPTS = ["Paris is the capital of", "The quick brown fox", "Large language models generate text",
           "PagedAttention stores the key value cache", "héllo wörld", "Continuous batching lets new requests",
           "a", "Berlin is"]
LONG = {"model": MODEL, "prompt": "Continuous batching lets", "max_tokens": 1900, "temperature": 0,
        "ignore_eos": True, "stream": True}


def _replica_pids(srv: RemoteServer) -> list[int]:
    """The engine-core processes (multiprocessing spawn children) of the server."""
    out = []
    for c in Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split():
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(int(c))
    return out


def _start(tiny_model_dir, *extra: str) -> RemoteServer:
    return RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                              "--data-parallel-size", "2", *extra])


@pytest.fixture(scope="module")
def dp_server(tiny_model_dir):
    srv = _start(tiny_model_dir, "--engine-death-exit-delay", "-1")  # the last test kills a replica: stay up
    yield srv
    srv.stop()


async def _complete_all(srv: RemoteServer) -> list[dict]:
    async with srv.async_client() as client:
        rs = await asyncio.gather(*(client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0,
                                                              logprobs=5, extra_body={"ignore_eos": True})
                                    for p in PROMPTS))
    return [r.choices[0].logprobs.model_dump() for r in rs]


def _same_greedy(ours: dict, ref: dict) -> None:
    """Tokens equal; at a divergence each side's token is in the other's top-5, and the comparison stops."""
    for i, (a, b) in enumerate(zip(ours["tokens"], ref["tokens"], strict=True)):
        if a != b:
            assert a in ref["top_logprobs"][i] and b in ours["top_logprobs"][i], (i, a, b)
            return


def test_dp2_serves_concurrent_requests_like_dp1_on_both_replicas(dp_server, server):
    srv = dp_server
    before = {e: srv.metric("pagoda:request_success_total", engine=e) for e in ("0", "1")}
    ours = asyncio.run(_complete_all(srv))
    ref = asyncio.run(_complete_all(server))  # the shared DP=1 server, same model
    for o, r in zip(ours, ref, strict=True):
        assert len(o["tokens"]) == 12
        _same_greedy(o, r)
    done = {e: srv.metric("pagoda:request_success_total", engine=e) - before[e] for e in ("0", "1")}
    assert done["0"] > 0 and done["1"] > 0, done  # the load balancer used both replicas
    assert done["0"] + done["1"] == len(PROMPTS)  # and the per-replica series add up to the total
    text = srv.get("/metrics").text
    assert 'pagoda:num_requests_running{engine="1",model_name="tiny"}' in text
    assert 'engine="2"' not in text
    r = srv.post("/reset_prefix_cache", {})  # answered by both replicas
    assert r.status_code == 200 and r.json() == {"success": True}


def _running(srv: RemoteServer, engine: str) -> float:
    return srv.metric("pagoda:num_requests_running", engine=engine)


class _TokensPerReplica:
    """A stat logger that adds up each replica's generated tokens."""

    def __init__(self) -> None:
        self.generated = [0, 0]

    def on_step(self, stats, engine=0):
        self.generated[engine] += stats.num_generation_tokens

    def __getattr__(self, name):  # the other hooks: nothing to record
        return lambda *a, **k: None


def test_abort_frees_blocks_on_the_replica_that_runs_the_request(tiny_model_dir, monkeypatch):
    from pagoda.config import EngineArgs
    from pagoda.engine.async_llm import AsyncLLM
    from pagoda.sampling_params import SamplingParams

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = SamplingParams(temperature=0.0, max_tokens=1900, ignore_eos=True)
    tokens = _TokensPerReplica()

    async def main():
        eng = AsyncLLM(EngineArgs(model=str(tiny_model_dir), kv_cache_memory_bytes=32 * 2**20, data_parallel_size=2),
                       stat_loggers=[tokens])
        await eng.start()
        try:
            a = eng.add_request("A", "Continuous batching lets", params)
            b = eng.add_request("B", "Continuous batching lets", params)
            ea, eb = eng._owner["A"], eng._owner["B"]
            assert {ea, eb} == {0, 1}  # the second request went to the replica the first left idle
            await b.__anext__()  # B runs on its replica and holds KV blocks there
            core = eng.cores.engines[eb]
            os.kill(core.proc.pid, signal.SIGSTOP)  # B's replica cannot finish B while its abort is on the way
            try:
                assert not b.finished
                b.close()  # the client leaves: the abort goes to B's replica only
            finally:
                os.kill(core.proc.pid, signal.SIGCONT)
            for _ in range(400):
                s = core.stats
                if s.num_running == s.num_waiting == 0 and s.kv_cache_usage == 0.0:
                    break
                await asyncio.sleep(0.05)
            assert s.num_running == s.num_waiting == 0 and s.kv_cache_usage == 0.0, s  # B's blocks are free
            assert tokens.generated[eb] < 1900  # B stopped where it was (a misrouted abort would not stop it)
            assert "B" not in eng._owner
            a.close()
        finally:
            await eng.shutdown()

    asyncio.run(main())


def test_a_dead_replica_fails_in_flight_requests_and_health(dp_server):
    """Last in this module: it kills a replica of the module's server (one server start fewer)."""
    srv = dp_server
    try:
        pids = _replica_pids(srv)
        assert len(pids) == 2
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", srv.url + "/v1/completions", json=LONG, headers=srv.headers) as resp:
                lines = resp.iter_lines()
                assert next(lines).startswith("data: ")
                os.kill(max(pids), signal.SIGKILL)
                events = [ln for ln in lines if ln.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        msg = json.loads(events[-2][6:])["error"]["message"]
        assert "data-parallel replica" in msg and "of 2) process exited" in msg, msg
        r = httpx.get(srv.url + "/health")
        assert r.status_code == 503 and "data-parallel replica" in r.json()["error"]["message"]
        r = httpx.post(srv.url + "/v1/completions", json={**LONG, "stream": False, "max_tokens": 2}, timeout=10)
        assert r.status_code == 503
        assert srv.proc.poll() is None  # the HTTP server itself stays up and answers
    finally:
        srv.stop()
    assert wait_for(lambda: not _replica_pids_alive(pids), timeout=15)  # the surviving replica went with the server


def _replica_pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(p)
    return alive
