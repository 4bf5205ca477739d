"""vLLM's ``AsyncLLM`` API as its examples use it (``examples/offline_inference/async_llm_streaming.py``):
``AsyncLLM.from_engine_args``, ``generate(prompt=, sampling_params=, request_id=)`` with DELTA outputs,
``await abort()``, ``is_running`` / ``errored``, a plain ``shutdown()`` (not awaited) that stops the engine core,
and leaving a generator early aborting its request."""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))

from server_utils import wait_idle  # noqa: E402

from pagoda import AsyncEngineArgs, AsyncLLM, RequestOutputKind, SamplingParams  # noqa: E402
from pagoda.engine.async_llm import EngineDeadError, RequestStream  # noqa: E402

PROMPT = "The future of artificial intelligence is"


@pytest.fixture(scope="module")
def engine_args(tiny):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # inherited by the engine-core process
        yield AsyncEngineArgs(model=str(tiny.path("llama")), kv_cache_memory_bytes=32 * 2**20)


class FinishLog:
    """A stat logger that keeps the finish reason of every finished engine request."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def on_finished(self, stats, engine: int = 0) -> None:
        self.reasons.append(stats.finish_reason)

    def __getattr__(self, name):  # the other StatLogger hooks: ignored
        return lambda *a, **k: None


async def _joined(engine: AsyncLLM, params: SamplingParams, rid: str, pause: bool = False):
    """(per index: concatenated token ids and text of the DELTA outputs, the outputs); ``pause``: read nothing
    after the first output until the engine is idle (the rest is merged into one output)."""
    acc: dict[int, tuple[list[int], str]] = {}
    outs = []
    async for out in engine.generate(request_id=rid, prompt=PROMPT, sampling_params=params):
        outs.append(out)
        for c in out.outputs:
            ids, text = acc.get(c.index, ([], ""))
            acc[c.index] = (ids + c.token_ids, text + c.text)
        if pause and len(outs) == 1:
            assert await wait_idle(engine, timeout=120)
    return acc, outs


def test_vllm_streaming_example(engine_args, monkeypatch):
    made: dict[str, int] = {}  # outputs the front end made per request (a consumer that falls behind sees fewer)
    real_put = RequestStream._put

    def put(self, out, deltas):
        made[self.request_id] = made.get(self.request_id, 0) + 1
        real_put(self, out, deltas)

    monkeypatch.setattr(RequestStream, "_put", put)

    async def main():
        log = FinishLog()
        before = set(multiprocessing.active_children())
        engine = AsyncLLM.from_engine_args(engine_args)
        engine.stat_loggers.append(log)
        assert engine.get_tokenizer() is not None and engine.is_running and not engine.errored
        await engine.start()  # waits for the start from_engine_args began; launches no second core
        assert engine.is_ready and len(set(multiprocessing.active_children()) - before) == 1
        for n in (1, 2):
            kw = dict(n=n, max_tokens=12, temperature=0.8, top_p=0.95, seed=42, ignore_eos=True)
            cum = [o async for o in engine.generate(PROMPT, SamplingParams(**kw), f"cum{n}")][-1]
            acc, outs = await _joined(engine, SamplingParams(output_kind=RequestOutputKind.DELTA, **kw), f"d{n}")
            assert outs[-1].finished and made[f"d{n}"] > 1
            assert acc == {c.index: (c.token_ids, c.text) for c in cum.outputs}
            # a consumer that falls behind gets the missed deltas merged, never loses them
            slow, outs = await _joined(engine, SamplingParams(output_kind=RequestOutputKind.DELTA, **kw),
                                       f"slow{n}", pause=True)
            assert len(outs) <= 2 and slow == acc
        await engine.abort("unknown")  # vLLM's abort is awaited
        await engine.abort(["cum1", "d2"])  # finished ids: nothing to do

        # leaving the loop early (break, cancellation) aborts the request and frees its KV blocks
        async for _ in engine.generate(PROMPT, SamplingParams(max_tokens=400, ignore_eos=True), "brk"):
            break
        assert await wait_idle(engine, timeout=60) and log.reasons[-1] == "abort"

        async def consume():
            async for _ in engine.generate(PROMPT, SamplingParams(max_tokens=400, ignore_eos=True), "cancel"):
                pass

        task = asyncio.create_task(consume())
        while not engine.output_processor.parents:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wait_idle(engine, timeout=60) and log.reasons[-1] == "abort"

        procs = [e.proc for e in engine.cores.engines]
        engine.shutdown()  # as vLLM's example: not awaited, and still stops the engine
        assert engine.errored and not engine.is_running
        with pytest.raises(EngineDeadError, match="shut down"):
            async for _ in engine.generate(PROMPT, SamplingParams(max_tokens=2), "late"):
                pass
        await engine.shutdown()  # a second call (awaited): waits for the cores to exit
        return procs

    procs = asyncio.run(main())
    assert not any(p.is_alive() for p in procs)


def test_from_engine_args_outside_a_loop_and_shutdown_from_sync_code(engine_args):
    engine = AsyncLLM.from_engine_args(engine_args)  # no running loop: the first generate() starts the core

    async def main():
        return [o async for o in engine.generate(PROMPT, SamplingParams(max_tokens=5, ignore_eos=True), "a")][-1]

    out = asyncio.run(main())
    assert out.finished and len(out.outputs[0].token_ids) == 5
    procs = [e.proc for e in engine.cores.engines]
    engine.shutdown()
    assert not any(p.is_alive() for p in procs) and engine.errored
    engine.shutdown()  # idempotent


def test_encode_is_an_async_generator(engine_args, tiny):
    """vLLM's ``encode(prompt, pooling_params, request_id)`` is iterated (``async for``) for the pooled output;
    its embedding is the offline ``LLM.embed`` one on the same model."""
    from dataclasses import replace

    from pagoda import PoolingParams

    want = tiny.llm("llama", runner="pooling").embed("Hello world", use_tqdm=False)[0].outputs.embedding

    async def main():
        engine = AsyncLLM.from_engine_args(replace(engine_args, runner="pooling"))
        try:
            return [o async for o in engine.encode(prompt="Hello world", pooling_params=PoolingParams(task="embed"),
                                                   request_id="e")]
        finally:
            await engine.shutdown()

    outs = asyncio.run(main())
    assert len(outs) == 1 and outs[0].finished
    assert outs[0].outputs.data.tolist() == pytest.approx(want, abs=1e-5)


class ReasonLog(FinishLog):
    """Also keeps each finished engine request's (finish reason, max_tokens observed)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int | None]] = []

    def on_finished(self, stats, engine: int = 0) -> None:
        super().on_finished(stats, engine)
        self.seen.append((stats.finish_reason, stats.max_tokens_param))


def test_abort_after_one_sample_ended_reports_that_sample_as_it_ended(engine_args):
    """n=2 where sample 0 stops on a token sample 1 never draws: aborting once sample 0 has ended reports it with
    its own reason ("stop") and sample 1 as "abort" (vLLM reports each sample when it ends); before, the ended sample
    was never reported."""
    LONG = 400  # sample 1's length: still running when the consumer, however far behind, sees sample 0 end
    async def main():
        engine = AsyncLLM.from_engine_args(engine_args)
        await engine.start()
        log = ReasonLog()
        engine.stat_loggers.append(log)
        kw = dict(n=2, temperature=1.0, ignore_eos=True)
        for seed in range(20):  # a seed whose sample 0 draws a token sample 1 never draws
            probe = [o async for o in engine.generate(PROMPT, SamplingParams(max_tokens=LONG, seed=seed, **kw),
                                                        f"probe{seed}")][-1]
            a, b = probe.outputs[0].token_ids, probe.outputs[1].token_ids
            only_a = [t for t in a[:12] if t not in b]
            if only_a:
                break
        else:
            pytest.fail("no seed separated the two samples")
        params = SamplingParams(max_tokens=LONG, seed=seed, stop_token_ids=[only_a[0]], **kw)
        log.seen.clear()
        async for out in engine.generate(PROMPT, params, "split"):
            if out.outputs[0].finish_reason is not None:
                assert out.outputs[1].finish_reason is None  # sample 1 runs to LONG tokens
                await engine.abort("split")
                break
        assert sorted(r for r, _ in log.seen) == ["abort", "stop"]
        assert all(m == LONG for _, m in log.seen)
        engine.shutdown()  # not awaited: the loop ends with its clean-up task cut short
        return engine

    engine = asyncio.run(main())
    # The cut-short clean-up still closed the sockets and their ZMQ contexts (left to the garbage collector, a
    # context with open sockets blocks the process in term() forever) and ended the core.
    assert engine.cores._zctx is None and engine.cores._azctx is None
    for e in engine.cores.engines:
        e.proc.join(timeout=10)
        assert not e.proc.is_alive()


def test_abort_by_another_caller_ends_the_stream_with_an_abort_output(engine_args):
    """A request aborted by someone other than its consumer ends its ``generate()`` with a final output whose
    unfinished samples carry finish_reason "abort" (vLLM's output processor puts that output in the queue), in
    the request's output kind; it used to raise RequestAbortedError in the consumer."""
    async def consume(engine: AsyncLLM, rid: str, kind: RequestOutputKind, first: asyncio.Event):
        outs = []
        params = SamplingParams(max_tokens=200, n=2, temperature=1.0, seed=1, ignore_eos=True, output_kind=kind)
        async for out in engine.generate(PROMPT, params, rid):
            outs.append(out)
            first.set()
        return outs

    async def main():
        engine = AsyncLLM.from_engine_args(engine_args)
        await engine.start()
        try:
            results = {}
            for kind in (RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA):
                first = asyncio.Event()
                task = asyncio.create_task(consume(engine, f"victim-{kind.name}", kind, first))
                await first.wait()
                await engine.abort(f"victim-{kind.name}")
                results[kind] = await asyncio.wait_for(task, 60)
            assert await wait_idle(engine, timeout=60)
            return results
        finally:
            engine.shutdown()

    results = asyncio.run(main())
    cum = results[RequestOutputKind.CUMULATIVE]
    final = cum[-1]
    assert final.finished and [c.finish_reason for c in final.outputs] == ["abort", "abort"]
    assert all(len(c.token_ids) < 200 for c in final.outputs)
    delta = results[RequestOutputKind.DELTA]
    assert delta[-1].finished and {c.finish_reason for c in delta[-1].outputs} == {"abort"}
    lengths = [len([t for o in delta for c in o.outputs if c.index == i for t in c.token_ids]) for i in range(2)]
    assert 0 < sum(lengths) and max(lengths) < 200  # cut short; the first output carried a token


def test_generate_takes_lora_request_none_and_refuses_an_adapter(engine_args):
    from pagoda.errors import ValidationError

    async def main():
        engine = AsyncLLM.from_engine_args(engine_args)
        await engine.start()
        try:
            params = SamplingParams(max_tokens=2, temperature=0)
            outs = [o async for o in engine.generate(PROMPT, params, "base", lora_request=None)]
            assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 2
            with pytest.raises(ValidationError, match="LoRA") as e:
                async for _ in engine.generate(PROMPT, params, "adapter", lora_request=object()):
                    pass
            assert e.value.parameter == "lora_request"
            assert await wait_idle(engine, timeout=60)
        finally:
            engine.shutdown()

    asyncio.run(main())


@pytest.mark.parametrize("when", ["config", "launched"])
def test_shutdown_while_starting_fails_the_start_as_engine_dead(engine_args, when):
    """``shutdown()`` while the engine starts: the start raises ``EngineDeadError`` (not a ``CancelledError`` from
    the sockets shutdown closed), and no core outlives it. ``config``: while the config resolves (nothing is
    launched); ``launched``: once the core is spawned, while start-up waits for its Ready."""
    async def main():
        before = set(multiprocessing.active_children())
        engine = AsyncLLM(engine_args, on_launched=(lambda *_: engine.shutdown()) if when == "launched" else None)
        start = asyncio.ensure_future(engine.start())
        if when == "config":
            await asyncio.sleep(0)  # the start is in create_config's thread
            engine.shutdown()
        with pytest.raises(EngineDeadError):
            await start
        if when == "config":
            assert engine.cores is None  # no core was launched (to load in full, then be stopped)
        await engine.shutdown()
        return before

    before = asyncio.run(main())
    left = set(multiprocessing.active_children()) - before
    for p in left:
        p.join(30)
    assert not any(p.is_alive() for p in left)
