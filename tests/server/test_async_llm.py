"""AsyncLLM (the front end of the engine-core process) used directly, without HTTP."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from server_utils import wait_idle

from pagoda.config import EngineArgs
from pagoda.engine.async_llm import AsyncLLM, EngineDeadError, RequestStream
from pagoda.sampling_params import SamplingParams

PROMPT = "Paris is the capital of"


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def run(engine_args: EngineArgs, body):
    """Start an AsyncLLM, run ``body(engine)``, shut it down."""

    async def main():
        eng = AsyncLLM(engine_args)
        await eng.start()
        try:
            return await body(eng)
        finally:
            await eng.shutdown()

    return asyncio.run(main())


async def collect(eng: AsyncLLM, rid: str, params: SamplingParams, prompt=PROMPT, delay: float = 0.0,
                  pause_until_idle: bool = False):
    """All outputs of one request and its text; ``pause_until_idle``: after the first output, read
    nothing more until the engine has finished the request (a consumer as slow as can be)."""
    stream = eng.add_request(rid, prompt, params)
    text = ""
    outs = []
    try:
        async for out in stream:
            outs.append(out)
            text += stream.last_deltas[0]
            if delay:
                await asyncio.sleep(delay)
            if pause_until_idle and len(outs) == 1:
                assert await wait_idle(eng, timeout=120)
    finally:
        stream.close()
    return outs, text


def test_generate_slow_consumer_and_deltas(engine_args):
    async def body(eng):
        fast, fast_text = await collect(eng, "fast", greedy(64))
        slow, slow_text = await collect(eng, "slow", greedy(64), pause_until_idle=True)
        # a slow consumer sees fewer, coalesced outputs but the same final result and text: everything
        # after its first output was produced while it did not read, and comes as one output
        # (whatever the machine's speed; a fixed sleep per read raced the engine)
        assert len(slow) <= 2 and slow[-1].finished
        assert slow[-1].outputs[0].token_ids == fast[-1].outputs[0].token_ids
        assert slow_text == fast_text == fast[-1].outputs[0].text
        # generate() is the plain async-iterator form
        outs = [o async for o in eng.generate(PROMPT, greedy(8), "gen")]
        assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 8
        assert await wait_idle(eng)

    run(engine_args, body)


def test_leaving_a_stream_aborts_and_frees_blocks(engine_args):
    async def body(eng):
        gen = eng.generate(PROMPT, greedy(1500), "long")
        async for _ in gen:
            break
        await gen.aclose()
        assert await wait_idle(eng)
        assert not eng._streams and not eng.output_processor.parents
        with pytest.raises(ValueError, match="maximum context length"):
            eng.add_request("too-long", PROMPT, greedy(5000))
        assert not eng._streams

    run(engine_args, body)


def test_output_processing_error_fails_only_that_request(engine_args):
    async def body(eng):
        op = eng.output_processor
        real = op.process_one  # the front end's per-output call

        def flaky(o):
            if op.child_to_parent.get(o.request_id) == "bad":
                raise RuntimeError("boom")
            return real(o)

        op.process_one = flaky
        good = [collect(eng, f"good{i}", greedy(32)) for i in range(4)]
        results = await asyncio.gather(collect(eng, "bad", greedy(32)), *good, return_exceptions=True)
        assert isinstance(results[0], RuntimeError) and "boom" in str(results[0])
        for outs, _text in results[1:]:
            assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 32
        assert await wait_idle(eng)
        assert eng.health() == (True, "")

    run(engine_args, body)


def test_n2_children_and_core_rejection(engine_args):
    async def body(eng):
        stream = eng.add_request("pair", PROMPT, SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=12,
                                                                ignore_eos=True))
        texts = ["", ""]
        async for out in stream:  # noqa: B007 - the last output is checked below
            for i, d in enumerate(stream.last_deltas):
                texts[i] += d
        assert [c.text for c in out.outputs] == texts and out.finished
        assert all(len(c.token_ids) == 12 for c in out.outputs)
        # the scheduler's invariant is the safety net behind admission: with admission fooled into
        # a longer context, the core refuses the request (an internal error, a 500) and keeps serving
        real = eng.input_processor.limits
        eng.input_processor.limits = msgspec.structs.replace(real, max_model_len=10**6, kv_cache_tokens=10**6)
        try:
            stream = eng.add_request("refused", PROMPT, SamplingParams(n=2, max_tokens=5000))
        finally:
            eng.input_processor.limits = real
        with pytest.raises(RuntimeError, match="can never be scheduled"):
            await stream.__anext__()
        assert "refused" not in eng._streams and "refused" not in eng.output_processor.parents
        assert await wait_idle(eng)

    run(engine_args, body)


def test_dead_core_fails_pending_requests(engine_args):
    async def body(eng):
        stream = eng.add_request("victim", PROMPT, greedy(1500))
        await stream.__anext__()
        eng.proc.kill()
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass
        assert not eng.health()[0]
        with pytest.raises(EngineDeadError):
            eng.add_request("after", PROMPT, greedy(4))

    run(engine_args, body)


def test_stream_interval_outputs_first_token_every_n_and_last(tiny_model_dir):
    """--stream-interval 4: outputs at the first token, then every 4 tokens, then the end, as the front end makes
    them; a consumer that falls behind (this one, if the machine stalls) sees some of them, never others; the text
    deltas add up to the final text."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        args = EngineArgs(model=str(tiny_model_dir), kv_cache_memory_bytes=32 * 2**20, stream_interval=4)
        made: list[int] = []
        real_put = RequestStream._put

        def put(self, out, deltas):
            made.append(len(out.outputs[0].token_ids))
            real_put(self, out, deltas)

        mp.setattr(RequestStream, "_put", put)

        async def body(eng):
            outs, text = await collect(eng, "si", greedy(18))
            assert made == [1, 5, 9, 13, 17, 18], made
            counts = [len(o.outputs[0].token_ids) for o in outs]
            assert counts[-1] == 18 and outs[-1].finished
            assert set(counts) <= set(made) and counts == sorted(counts), counts
            assert text == outs[-1].outputs[0].text
            return counts

        run(args, body)
