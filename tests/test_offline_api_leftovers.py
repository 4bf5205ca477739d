"""vLLM's offline API leftovers: ``LLM.get_metrics`` (with ``disable_log_stats=False``), ``tokenization_kwargs``,
``collective_rpc`` / ``apply_model``, ``start_profile`` / ``stop_profile``, and ``await AsyncLLM.add_request``
returning the request's output collector (``get()``), also before the engine has started."""

from __future__ import annotations

import asyncio

import pytest

from pagoda import AsyncEngineArgs, AsyncLLM, SamplingParams
from pagoda.engine.llm_engine import Counter, Gauge, Histogram
from pagoda.errors import ValidationError

PROMPTS = ["The capital of France is", "Continuous batching lets a server"]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny):
    return tiny.llm("llama", disable_log_stats=False)


def _by_name(metrics) -> dict:
    out: dict = {}
    for m in metrics:
        out.setdefault(m.name, []).append(m)
    return out


def _counter(metrics, name: str, **labels) -> int:
    return sum(m.value for m in _by_name(metrics).get(name, [])
               if isinstance(m, Counter) and all(m.labels.get(k) == v for k, v in labels.items()))


def _hist(metrics, name: str) -> tuple[int, float]:
    hs = [m for m in _by_name(metrics).get(name, []) if isinstance(m, Histogram)]
    return sum(h.count for h in hs), sum(h.sum for h in hs)


def test_get_metrics_counts_what_the_engine_did(llm):
    before = llm.get_metrics()
    outs = llm.generate(PROMPTS, greedy(5), use_tqdm=False)
    after = llm.get_metrics()
    gen = sum(len(o.outputs[0].token_ids) for o in outs)
    prompt = sum(len(o.prompt_token_ids) for o in outs)
    assert gen == 10
    assert _counter(after, "vllm:generation_tokens") - _counter(before, "vllm:generation_tokens") == gen
    assert _counter(after, "vllm:prompt_tokens") - _counter(before, "vllm:prompt_tokens") == prompt
    assert (_counter(after, "vllm:request_success", finished_reason="length")
            - _counter(before, "vllm:request_success", finished_reason="length")) == 2
    for name in ("vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
                 "vllm:time_to_first_token_seconds", "vllm:request_prompt_tokens"):
        assert _hist(after, name)[0] - _hist(before, name)[0] == 2, name
    gen_sum = _hist(after, "vllm:request_generation_tokens")[1] - _hist(before, "vllm:request_generation_tokens")[1]
    assert gen_sum == gen
    # 4 gaps between 5 tokens, per request
    assert _hist(after, "vllm:inter_token_latency_seconds")[0] - _hist(before, "vllm:inter_token_latency_seconds")[0] \
        == 8
    running = [m for m in _by_name(after)["vllm:num_requests_running"] if isinstance(m, Gauge)]
    assert running and all(m.value == 0 for m in running)
    assert all(m.labels.get("engine") == "0" for m in running)
    h = _by_name(after)["vllm:e2e_request_latency_seconds"][0]
    assert h.buckets["+Inf"] == h.count


def test_get_metrics_needs_disable_log_stats_false(tiny):
    plain = tiny.llm("llama")
    with pytest.raises(RuntimeError, match="disable_log_stats=False"):
        plain.get_metrics()


def test_tokenization_kwargs_are_honoured_or_refused_by_name(llm):
    tok = llm.get_tokenizer()
    text = PROMPTS[1]
    full = tok.encode(text, add_special_tokens=True)
    bare = tok.encode(text, add_special_tokens=False)

    def ids(kw):
        return llm.generate(text, greedy(1), use_tqdm=False, tokenization_kwargs=kw)[0].prompt_token_ids

    assert ids({"add_special_tokens": False}) == bare
    assert ids({}) == full
    assert ids({"truncation": True, "max_length": 3}) == full[-3:]
    assert ids({"truncate_prompt_tokens": 2}) == full[-2:]
    assert ids({"truncation": False, "max_length": 3}) == full
    tok_prompt = {"prompt_token_ids": full}
    assert llm.generate(tok_prompt, greedy(1), use_tqdm=False,
                        tokenization_kwargs={"max_length": 4})[0].prompt_token_ids == full[-4:]
    with pytest.raises(ValueError, match="padding"):
        ids({"padding": "max_length"})
    with pytest.raises(ValueError, match="max_length"):
        ids({"max_length": 0})


def test_pooling_methods_take_tokenization_kwargs(tiny):
    """``LLM.embed`` / ``encode`` / ``classify`` / ``reward`` / ``score`` take vLLM's ``tokenization_kwargs`` as
    ``generate`` does: the last k tokens kept, special tokens left out on request, other keys refused by name."""
    from pagoda.errors import ValidationError

    pool = tiny.llm("llama", runner="pooling")
    tok = pool.get_tokenizer()
    text = "the quick brown fox jumps over the lazy dog"
    full = pool.embed(text, use_tqdm=False)[0]
    (cut,) = pool.embed(text, use_tqdm=False, tokenization_kwargs={"truncate_prompt_tokens": 3})
    assert cut.prompt_token_ids == full.prompt_token_ids[-3:]
    (ref,) = pool.embed({"prompt_token_ids": full.prompt_token_ids[-3:]}, use_tqdm=False)
    assert cut.outputs.embedding == ref.outputs.embedding
    (plain,) = pool.encode(text, pooling_task="embed", use_tqdm=False,
                           tokenization_kwargs={"add_special_tokens": False})
    assert plain.prompt_token_ids == tok.encode(text, add_special_tokens=False)
    (a, b) = pool.score(text, ["a dog", "a fox"], use_tqdm=False, tokenization_kwargs={"max_length": 2})
    assert len(a.prompt_token_ids) == len(b.prompt_token_ids) == 4  # two texts of two tokens each, cosine-scored
    with pytest.raises(ValidationError, match=r"\['padding'\] are not supported"):
        pool.embed(text, use_tqdm=False, tokenization_kwargs={"padding": True})


def test_pooling_tokenization_kwargs_lowercase_where_the_pooler_does(tiny, monkeypatch):
    """A pooler that lowercases (sentence-transformers' ``do_lower_case``) sees the lowercased text through
    ``tokenization_kwargs`` too, a plain text or a prompt dict alike; the output keeps the text as given."""
    import dataclasses

    pool = tiny.llm("llama", runner="pooling")
    eng = pool.llm_engine
    monkeypatch.setattr(eng, "cfg", dataclasses.replace(eng.cfg, pooler=dataclasses.replace(eng.cfg.pooler,
                                                                                           lowercase=True)))
    tok = pool.get_tokenizer()
    kw = {"add_special_tokens": False}
    for prompt in ("Hello WORLD Again", {"prompt": "Hello WORLD Again"}):
        (out,) = pool.embed(prompt, use_tqdm=False, tokenization_kwargs=kw)
        assert out.prompt_token_ids == tok.encode("hello world again", add_special_tokens=False)


def test_collective_rpc_and_apply_model_run_on_the_in_process_worker(llm):
    runner = llm.llm_engine.core.runner
    assert llm.collective_rpc(lambda w, x, y=0: (w is runner, x + y), args=(2,), kwargs={"y": 3}) == [(True, 5)]
    n = llm.apply_model(lambda model: sum(p.numel() for p in model.parameters()))
    assert n == [sum(p.numel() for p in runner.model.parameters())] and n[0] > 0
    with pytest.raises(ValueError, match="timeout"):
        llm.collective_rpc(lambda w: None, timeout=1.0)
    with pytest.raises(ValueError, match="no public method 'nope'"):
        llm.collective_rpc("nope")


def test_profile_writes_a_trace_to_vllms_folder(llm, tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_TORCH_PROFILER_DIR", raising=False)
    with pytest.raises(RuntimeError, match="VLLM_TORCH_PROFILER_DIR"):
        llm.start_profile()
    with pytest.raises(RuntimeError, match="No profile is running"):
        llm.stop_profile()
    monkeypatch.setenv("VLLM_TORCH_PROFILER_DIR", str(tmp_path))
    llm.start_profile()
    try:
        with pytest.raises(RuntimeError, match="running already"):
            llm.start_profile()
        llm.generate(PROMPTS[0], greedy(2), use_tqdm=False)
    finally:
        llm.stop_profile()
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size > 0]


@pytest.fixture(scope="module")
def engine_args(tiny):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # inherited by the engine-core process
        yield AsyncEngineArgs(model=str(tiny.path("llama")), kv_cache_memory_bytes=32 * 2**20)


def test_await_add_request_before_and_after_the_start(engine_args, llm):
    """vLLM's ``q = await engine.add_request(...)`` then ``await q.get()`` until finished: on an engine built outside
    a loop (queued after the start it triggers) and on a ready one; the tokens match the offline LLM's."""
    ref = llm.generate(PROMPTS[0], greedy(6), use_tqdm=False)[0].outputs[0].token_ids
    engine = AsyncLLM.from_engine_args(engine_args)

    async def drain(q):
        out = await q.get()
        while not out.finished:
            out = await q.get()
        assert q.get_nowait() is None
        return out.outputs[0].token_ids

    async def main():
        first = await drain(await engine.add_request("a", PROMPTS[0], greedy(6)))
        second = await drain(await engine.add_request("b", PROMPTS[0], greedy(6)))
        plain = engine.add_request("c", PROMPTS[0], greedy(6))  # the server's plain call on a ready engine
        third = [o async for o in plain][-1].outputs[0].token_ids
        with pytest.raises(ValidationError, match="arrival_time"):
            await engine.add_request("d", PROMPTS[0], greedy(2), arrival_time=1.0)
        with pytest.raises(ValidationError, match="data_parallel_rank"):
            await engine.add_request("e", PROMPTS[0], greedy(2), data_parallel_rank=1)
        with pytest.raises(ValidationError, match="padding"):
            await engine.add_request("f", PROMPTS[0], greedy(2), tokenization_kwargs={"padding": True})
        q = await engine.add_request("g", PROMPTS[0], greedy(2), data_parallel_rank=0,
                                     tokenization_kwargs={"truncate_prompt_tokens": 3})
        last = await drain(q)
        return first, second, third, last, len(engine.output_processor.parents)

    try:
        first, second, third, last, pending = asyncio.run(main())
    finally:
        engine.shutdown()
    assert first == second == third == ref
    assert len(last) == 2 and pending == 0


def test_a_deferred_request_raises_its_error_where_awaited(engine_args):
    engine = AsyncLLM.from_engine_args(engine_args)

    async def main():
        q = engine.add_request("x", PROMPTS[0], SamplingParams(max_tokens=10**9))  # before the start: deferred
        with pytest.raises(ValidationError):
            await q
        closed = engine.add_request("y", PROMPTS[0], greedy(2))
        closed.close()  # dropped: never queued
        await asyncio.sleep(0)
        return len(engine.output_processor.parents)

    try:
        assert asyncio.run(main()) == 0
    finally:
        engine.shutdown()
