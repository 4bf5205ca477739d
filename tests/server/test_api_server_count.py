"""Several API server processes on one engine core (``--api-server-count``).

In process (two :class:`AsyncLLM` front ends, client 0 starting the core and client 1 attached to it, in one event
loop, so which front end sends what is certain):
* both serve concurrent greedy requests, with the single front end's tokens (top-5 rule), each getting exactly
  its own requests' outputs; with two data-parallel replicas each client spreads its own requests over both;
* a request id in flight from one client is refused to the other (a 400 naming ``request_id``), and the first
  request is unharmed; an abort from client 1 frees its blocks; a prefix-cache reset asked by client 1 is
  answered to client 1;
* only client 0 feeds the engine-level stats to its stat loggers (counted once);
* client 1 shutting down leaves the core serving client 0.

Through ``pagoda serve --api-server-count 2`` (a subprocess): the OpenAI client gets the single-process server's
greedy tokens; ``/metrics`` sums both processes (every scrape, whichever process answers, counts every request
once); ``pagoda bench serve`` counts both API processes' CPU as the API server's and only the core as the core; the
flags it cannot honour stop start-up with a message naming them; SIGTERM stops every process (exit 0);
an API server process that dies takes the server down (exit 1).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from server_utils import MODEL, RemoteServer, wait_for, wait_idle

from pagoda.config import EngineArgs
from pagoda.engine.async_llm import AsyncLLM
from pagoda.engine.core_proc import Attach
from pagoda.errors import ValidationError
from pagoda.sampling_params import SamplingParams

PROMPTS = ["Paris is the capital of", "The quick brown fox", "Large language models generate text",
           "PagedAttention stores the key value cache", "héllo wörld", "Continuous batching lets new requests"]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=5)


async def tokens_and_top5(eng: AsyncLLM, rid: str, prompt: str, n: int = 10) -> tuple[list[int], list[set[int]]]:
    stream = eng.add_request(rid, prompt, greedy(n))
    last = None
    async for out in stream:
        last = out
    assert last is not None and last.finished
    c = last.outputs[0]
    return list(c.token_ids), [set(d) for d in c.logprobs]


def same_greedy(ours: tuple[list[int], list[set[int]]], ref: tuple[list[int], list[set[int]]]) -> None:
    for i, (a, b) in enumerate(zip(ours[0], ref[0], strict=True)):
        if a != b:
            assert a in ref[1][i] and b in ours[1][i], (i, a, b)
            return


class StepCounter:
    """A stat logger that counts the engine-level reports (``on_step``) and the first tokens it is told of."""

    def __init__(self) -> None:
        self.steps = 0
        self.generated = 0
        self.first_tokens = 0
        self.counted_prompt = 0  # the token counters' increments (every API process counts its own requests)
        self.counted_generation = 0
        self.engines: set[int] = set()  # the replicas whose first tokens it was told of

    def on_step(self, stats, engine=0):
        self.steps += 1
        self.generated += stats.num_generation_tokens

    def on_first_token(self, seconds, engine=0):
        self.first_tokens += 1
        self.engines.add(engine)

    def on_tokens(self, prompt_tokens, generation_tokens, engine=0):
        self.counted_prompt += prompt_tokens
        self.counted_generation += generation_tokens

    def __getattr__(self, name):  # the other hooks: nothing to record
        return lambda *a, **k: None


def run_two_clients(engine_args: EngineArgs, body):
    """Client 0 (starts the core for two clients) and client 1 (attached), both ready; ``body(c0, c1, loggers)``."""

    async def main():
        launched: asyncio.Future = asyncio.get_running_loop().create_future()
        loggers = (StepCounter(), StepCounter())
        c0 = AsyncLLM(engine_args, stat_loggers=[loggers[0]], api_server_count=2,
                      on_launched=lambda ipc_dir, pids: launched.set_result((ipc_dir, pids)))
        start0 = asyncio.create_task(c0.start())
        ipc_dir, pids = await launched
        c1 = AsyncLLM(engine_args, stat_loggers=[loggers[1]], attach=Attach(ipc_dir, pids, 1))
        try:
            await asyncio.gather(start0, c1.start())
            return await body(c0, c1, loggers)
        finally:
            await c1.shutdown()
            await c0.shutdown()

    return asyncio.run(main())


def test_two_clients_share_one_core(engine_args):
    async def body(c0: AsyncLLM, c1: AsyncLLM, loggers):
        ref = [await tokens_and_top5(c0, f"ref-{i}", p) for i, p in enumerate(PROMPTS)]
        steps_before = loggers[0].steps
        outs = await asyncio.gather(*(tokens_and_top5(c0 if i % 2 else c1, f"r-{i}", p)
                                      for i, p in enumerate(PROMPTS)))
        for o, r in zip(outs, ref, strict=True):
            assert len(o[0]) == 10
            same_greedy(o, r)
        # both have every step's message by now (each reports the core idle: the heartbeat follows the steps)
        assert await wait_idle(c0, timeout=30) and await wait_idle(c1, timeout=30)
        # each front end saw its own requests' first tokens only; client 0 alone got the engine's stats
        assert loggers[1].first_tokens == len(PROMPTS) // 2
        assert loggers[0].first_tokens == len(PROMPTS) + len(PROMPTS) // 2
        assert loggers[0].steps > steps_before and loggers[1].steps == 0
        assert loggers[0].generated == 10 * (2 * len(PROMPTS))
        # the token counters: each process its own requests' tokens, the two summing to every request's
        assert loggers[1].counted_generation == 10 * (len(PROMPTS) // 2)
        assert loggers[0].counted_generation + loggers[1].counted_generation == 10 * (2 * len(PROMPTS))
        n_prompt = sum(len(c0.input_processor.tokenize_prompt(p)[1]) for p in PROMPTS)
        assert loggers[0].counted_prompt + loggers[1].counted_prompt == 2 * n_prompt
        assert not c0._streams and not c1._streams
        assert not c0.output_processor.parents and not c1.output_processor.parents

    run_two_clients(engine_args, body)


def test_request_id_in_use_by_the_other_client_is_refused(engine_args):
    async def body(c0: AsyncLLM, c1: AsyncLLM, loggers):
        long = c0.add_request("same-id", PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=1500,
                                                                    ignore_eos=True))
        first = await long.__anext__()  # running in the core now
        assert not first.finished
        with pytest.raises(ValidationError) as e:
            await tokens_and_top5(c1, "same-id", PROMPTS[1])
        assert e.value.parameter == "request_id" and "in use" in str(e.value)
        # client 1 aborts a request of its own: its blocks are freed; client 0's request runs on
        mine = c1.add_request("mine", PROMPTS[2], SamplingParams(temperature=0.0, max_tokens=1500, ignore_eos=True))
        await mine.__anext__()
        mine.close()
        last = first
        async for out in long:
            last = out
        assert last.finished and len(last.outputs[0].token_ids) == 1500
        assert await wait_idle(c0, timeout=60)
        assert await c1.reset_prefix_cache() is True  # answered to client 1
        # the id is free again once its request finished
        assert len((await tokens_and_top5(c1, "same-id", PROMPTS[1]))[0]) == 10

    run_two_clients(engine_args, body)


def test_two_clients_on_two_data_parallel_replicas(engine_args):
    """Each client balances its own requests over both replicas; tokens as the single front end's."""
    import dataclasses

    dp_args = dataclasses.replace(engine_args, data_parallel_size=2)

    async def body(c0: AsyncLLM, c1: AsyncLLM, loggers):
        ref = [await tokens_and_top5(c0, f"ref-{i}", p) for i, p in enumerate(PROMPTS)]
        outs = await asyncio.gather(*(tokens_and_top5(c, f"r-{c.client}-{i}", p)
                                      for c in (c0, c1) for i, p in enumerate(PROMPTS)))
        for o, r in zip(outs, ref + ref, strict=True):
            same_greedy(o, r)
        assert loggers[1].engines == {0, 1}  # client 1's own requests ran on both replicas
        assert loggers[0].engines == {0, 1}
        assert not c0._owner and not c1._owner
        assert await c1.reset_prefix_cache() is True  # both replicas answer client 1

    run_two_clients(dp_args, body)


def test_client_1_leaving_keeps_the_core_serving_client_0(engine_args):
    async def body(c0: AsyncLLM, c1: AsyncLLM, loggers):
        assert len((await tokens_and_top5(c1, "a", PROMPTS[0]))[0]) == 10
        await c1.shutdown()
        assert c0.proc.is_alive()
        assert len((await tokens_and_top5(c0, "b", PROMPTS[1]))[0]) == 10
        assert c0.health() == (True, "")

    run_two_clients(engine_args, body)


# ------------------------------------------------------------------------------- pagoda serve
@pytest.fixture(scope="module")
def multi_server(tiny_model_dir):
    srv = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                             "--api-server-count", "2"])
    yield srv
    srv.stop()


async def _complete_all(srv: RemoteServer) -> list[dict]:
    async def one(p: str) -> dict:
        # one connection per request, so the kernel may hand each to either process
        async with srv.async_client() as client:
            r = await client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0, logprobs=5,
                                                extra_body={"ignore_eos": True})
        return r.choices[0].logprobs.model_dump()

    return list(await asyncio.gather(*(one(p) for p in PROMPTS * 2)))


def test_serve_with_two_api_servers_matches_one(multi_server, server):
    srv = multi_server
    before = srv.metric("pagoda:request_success_total")
    ours = asyncio.run(_complete_all(srv))
    ref = asyncio.run(_complete_all(server))  # the shared single-process server, same model
    for o, r in zip(ours, ref, strict=True):
        assert len(o["tokens"]) == 12
        for i, (a, b) in enumerate(zip(o["tokens"], r["tokens"], strict=True)):
            if a != b:
                assert a in r["top_logprobs"][i] and b in o["top_logprobs"][i], (i, a, b)
                break
    # every scrape sums both processes' counts, whichever process answers it
    for _ in range(6):
        with httpx.Client() as fresh:  # a new connection each time
            text = fresh.get(srv.url + "/metrics").text
        line = next(ln for ln in text.splitlines() if ln.startswith("pagoda:request_success_total{")
                    and 'finished_reason="length"' in ln)
        assert float(line.rsplit(" ", 1)[1]) - before == 2 * len(PROMPTS), line
    assert "pagoda:num_requests_running{" in text and "pagoda:time_to_first_token_seconds_bucket{" in text
    assert "pagoda:inter_token_latency_seconds_count{" in text
    assert len(srv.children_named("pagoda-api1")) == 1 and len(srv.children_named("pagoda-core")) == 1


def test_bench_cpu_snapshot_counts_every_api_server_and_only_the_core_as_core(multi_server):
    """``pagoda bench serve``'s CPU reading: the ``pagoda-api<k>`` children are API servers, not engine cores."""
    from pagoda.benchmarks.server_process import CpuSnapshot, cpu_seconds

    srv = multi_server
    api1 = srv.children_named("pagoda-api1")
    core = srv.children_named("pagoda-core")
    assert len(api1) == 1 and len(core) == 1
    before = cpu_seconds(srv.proc.pid) + cpu_seconds(api1[0])
    snap = CpuSnapshot.take(srv.proc.pid)
    after = cpu_seconds(srv.proc.pid) + cpu_seconds(api1[0])
    assert snap.engine_core_pids == core
    assert before <= snap.api_server_s <= after  # both API processes summed (CPU time only grows)


@pytest.mark.parametrize("flags, message", [
    (["--api-server-count", "0"], "--api-server-count must be at least 1"),
    (["--api-server-count", "2", "--enable-server-load-tracking"], "--enable-server-load-tracking"),
])
def test_flags_it_cannot_honour_stop_start_up(tiny_model_dir, flags, message):
    r = subprocess.run([sys.executable, "-m", "pagoda", "serve", str(tiny_model_dir), *flags], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]


def test_sigterm_stops_every_process_and_a_dead_api_server_takes_the_server_down(tiny_model_dir):
    args = ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M", "--api-server-count", "2"]
    srv = RemoteServer(str(tiny_model_dir), args)
    children = srv.children_named("pagoda-api1") + srv.children_named("pagoda-core")
    assert len(children) == 2
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=60) == 0, srv.log()
    assert wait_for(lambda: not any(Path(f"/proc/{c}").exists() for c in children), timeout=30)

    srv = RemoteServer(str(tiny_model_dir), args)
    try:
        (api1,) = srv.children_named("pagoda-api1")
        os.kill(api1, signal.SIGKILL)
        assert srv.proc.wait(timeout=60) == 1
        assert "API server process 1 exited" in srv.log()
    finally:
        srv.stop()
