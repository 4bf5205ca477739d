"""Pipeline parallelism on the CPU (gloo): PP=2 (and TP=2 x PP=2) gives PP=1's tokens and logprobs (and HF's),
with several steps in flight, chunked prefill, prefix caching and preemption; the layer split; a dead stage
fails the engine fast; bad flags fail start-up naming the flag (GUIDE §4: fp32, greedy)."""

from __future__ import annotations

import pytest
from engine_checks import (
    PROMPTS,
    assert_engine_clean,
    assert_follows_hf_top5,
    assert_outputs_close,
    assert_start_up_error,
    greedy,
    token_ids,
)

from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.pipeline_scheduler import PipelineScheduler
from pagoda.core.request import Request, RequestStatus
from pagoda.distributed.pipeline import get_pp_indices, layer_partition
from pagoda.sampling_params import SamplingParams

ATOL = 1e-4
# Small steps and few seats: prompts are prefilled in chunks, and the waiting requests fill a second step
# while the first is in the pipeline.
PP_KW = {"max_num_batched_tokens": 32, "max_num_seqs": 4, "device": "cpu"}


def _llm(tiny, arch: str = "llama", **kw):
    from pagoda import LLM

    return LLM(str(tiny.path(arch)), dtype="float32", **{**PP_KW, **kw})


def _count_in_flight(llm, monkeypatch) -> list[int]:
    """Record, at each step's completion, how many steps were in flight (itself included)."""
    core = llm.llm_engine.core
    seen: list[int] = []
    real = core._complete

    def complete(sched, handle):
        seen.append(len(core._batch_queue) + 1)
        return real(sched, handle)

    monkeypatch.setattr(core, "_complete", complete)
    return seen


def test_pp2_matches_pp1_and_hf_with_steps_in_flight(tiny, monkeypatch):
    """Ten prompts, four seats, 32-token steps: two steps in the pipeline at once, prompts chunked. Tokens equal
    PP=1's, logprobs and prompt logprobs within 1e-4, and follow HF by the top-5 rule."""
    params = greedy(max_tokens=12, logprobs=5, prompt_logprobs=5)
    one = tiny.llm("llama", **PP_KW).generate(PROMPTS, params, use_tqdm=False)
    llm = _llm(tiny, pipeline_parallel_size=2)
    try:
        in_flight = _count_in_flight(llm, monkeypatch)
        two = llm.generate(PROMPTS, params, use_tqdm=False)
        assert_engine_clean(llm)
    finally:
        llm.llm_engine.shutdown()
    assert max(in_flight) == 2  # the pipeline held two steps
    assert_outputs_close(one, two, ATOL)
    assert_follows_hf_top5(tiny, "llama", two, 12)


def test_pp2_prefix_caching_and_preemption_match_pp1(tiny):
    """A shared prefix hit in the cache, then a KV cache too small for every request at once (requests are
    preempted, some while their step is in flight): the same tokens as PP=1 under the same limits."""
    prefix = PROMPTS[8]
    prompts = [prefix + s for s in (" one", " two", " three", " four", " five", " six")]
    kw = {"num_gpu_blocks_override": 24, "block_size": 8}
    params = greedy(max_tokens=24)
    one = tiny.llm("llama", **PP_KW, **kw)
    ref = [token_ids(one.generate(prompts[:1], params, use_tqdm=False)),
           token_ids(one.generate(prompts[1:], params, use_tqdm=False))]
    llm = _llm(tiny, pipeline_parallel_size=2, **kw)
    try:
        got = [token_ids(llm.generate(prompts[:1], params, use_tqdm=False)),
               token_ids(llm.generate(prompts[1:], params, use_tqdm=False))]
        core = llm.llm_engine.core
        assert core.kv.prefix_cache_hits > 0
        assert core.scheduler.num_preemptions_total > 0
        assert_engine_clean(llm)
    finally:
        llm.llm_engine.shutdown()
    assert got == ref


def test_tp2_pp2_matches_pp1(tiny):
    """Four ranks: two stages of two tensor ranks each (a subgroup per stage)."""
    prompts = PROMPTS[2:4] + PROMPTS[8:9]
    one = tiny.llm("llama", **PP_KW).generate(prompts, greedy(max_tokens=8), use_tqdm=False)
    llm = _llm(tiny, tensor_parallel_size=2, pipeline_parallel_size=2)
    try:
        assert token_ids(llm.generate(prompts, greedy(max_tokens=8), use_tqdm=False)) == token_ids(one)
    finally:
        llm.llm_engine.shutdown()


@pytest.mark.parametrize("tie", [True, False])
def test_tp2_pp2_vocab_parallel_head_with_odd_vocab_matches_pp1(tmp_path, tie):
    """vocab_size 401: the first stage's embedding and the last stage's LM head (tied: the last stage's copy of
    the embedding) split 201 + 201 rows (one padding row) over their stage's two tensor ranks, the logits gathered
    on the stage's tensor rank 0 (the engine core). Tokens, logprobs and prompt logprobs equal PP=1's."""
    from tiny_models import build_tiny_model

    from pagoda import LLM

    folder = build_tiny_model(tmp_path / "odd", "llama", tie=tie, extra_vocab=1)
    prompts = PROMPTS[2:4] + PROMPTS[8:9]
    params = greedy(max_tokens=6, logprobs=5, prompt_logprobs=5)
    one = LLM(str(folder), dtype="float32", **PP_KW)
    try:
        ref = one.generate(prompts, params, use_tqdm=False)
    finally:
        one.llm_engine.shutdown()
    llm = LLM(str(folder), dtype="float32", tensor_parallel_size=2, pipeline_parallel_size=2, **PP_KW)
    try:
        model = llm.llm_engine.core.runner.model
        head = model.embed_tokens if tie else model.lm_head
        assert head.weight.shape[0] == 201  # the engine core's block of the padded vocabulary
        got = llm.generate(prompts, params, use_tqdm=False)
        assert_engine_clean(llm)
    finally:
        llm.llm_engine.shutdown()
    assert_outputs_close(ref, got, ATOL, prompt_keys="same")


def test_killed_stage_fails_the_engine_fast(tiny, monkeypatch):
    from pagoda.distributed.executor import WorkerDied

    # The collectives' timeout at a day: a detection that waited for it would hang (pytest-timeout) instead of
    # raising, so no wall-clock bound is needed (it would depend on the machine's speed).
    monkeypatch.setenv("PAGODA_DIST_TIMEOUT_S", "86400")
    llm = _llm(tiny, pipeline_parallel_size=2)
    try:
        llm.generate(PROMPTS[:1], greedy(max_tokens=2), use_tqdm=False)
        executor = llm.llm_engine.core.runner.executor
        assert executor.rank == 1 and executor.worker_ranks == [0]  # the engine core runs the last stage
        executor.procs[0].kill()
        executor.procs[0].wait()
        with pytest.raises(WorkerDied, match=r"rank 0 of 2 \(pipeline stage 0 of 2, tensor rank 0\) died"):
            llm.generate(PROMPTS[:2], greedy(max_tokens=4), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()


def test_stage_that_dies_mid_step_is_reported(tiny, monkeypatch):
    """Stage 0 killed right after a step was sent: the engine core, waiting for its hidden states (or sending the
    next step), raises WorkerDied instead of hanging."""
    from pagoda.distributed.executor import MultiprocExecutor, WorkerDied

    # The collectives' timeout at a day: a detection that waited for it would hang (pytest-timeout) instead of
    # raising, so no wall-clock bound is needed (it would depend on the machine's speed).
    monkeypatch.setenv("PAGODA_DIST_TIMEOUT_S", "86400")
    llm = _llm(tiny, pipeline_parallel_size=2)
    try:
        real = MultiprocExecutor.broadcast_step

        def kill_after_send(self, *args):
            real(self, *args)
            self.procs[0].kill()

        monkeypatch.setattr(MultiprocExecutor, "broadcast_step", kill_after_send)
        with pytest.raises(WorkerDied, match=r"pipeline stage 0 of 2, tensor rank 0\) died"):
            llm.generate(PROMPTS[:3], greedy(max_tokens=4), use_tqdm=False)
    finally:
        monkeypatch.undo()
        llm.llm_engine.shutdown()


@pytest.mark.parametrize("arch,kw,match", [
    ("llama", {"pipeline_parallel_size": 3}, "--pipeline-parallel-size 3: the model has only 2 decoder layers"),
    ("llama", {"pipeline_parallel_size": 0}, "--pipeline-parallel-size. must be at least 1"),
    ("mixtral", {"pipeline_parallel_size": 2}, "MixtralForCausalLM has no pipeline stages yet"),
    ("gemma2", {"pipeline_parallel_size": 2}, "Gemma2ForCausalLM has no pipeline stages yet"),
    ("llama", {"pipeline_parallel_size": 2, "async_scheduling": True}, "--no-async-scheduling"),
    ("llama", {"pipeline_parallel_size": 2, "speculative_config": {"method": "ngram", "num_speculative_tokens": 2}},
     "--pipeline-parallel-size 2: speculative decoding"),
    ("llama", {"pipeline_parallel_size": 2, "kv_offloading_size": 1.0}, "host KV tier"),
])
def test_bad_pipeline_input_fails_at_start_up(tiny, arch, kw, match):
    assert_start_up_error(tiny.path(arch), kw, match)


def test_layer_partition_even_split_and_env_override(monkeypatch):
    monkeypatch.delenv("VLLM_PP_LAYER_PARTITION", raising=False)
    assert layer_partition(30, 4) == [7, 8, 8, 7]  # the remainder before the last stage, latest first
    assert layer_partition(8, 2) == [4, 4]
    assert layer_partition(7, 3) == [2, 3, 2]
    assert [get_pp_indices(30, r, 4) for r in range(4)] == [(0, 7), (7, 15), (15, 23), (23, 30)]
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", "5,3")
    assert get_pp_indices(8, 1, 2) == (5, 8)
    for bad in ("5,2", "4,4,0", "x,8"):
        monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", bad)
        with pytest.raises(ValueError, match="VLLM_PP_LAYER_PARTITION"):
            layer_partition(8, 2 if bad != "4,4,0" else 3)


def test_the_partition_is_resolved_once_into_the_config_the_ranks_receive(tiny, monkeypatch):
    """Workers (Ray actors on other nodes included) read their layers from the config, not their environment."""
    from pagoda.config import EngineArgs
    from pagoda.distributed.config_codec import decode_config, encode_config
    from pagoda.distributed.pipeline import PPStage

    path = str(tiny.path("llama"))
    layers = int(EngineArgs(model=path, device="cpu").create_config().hf_config["num_hidden_layers"])
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", f"1,{layers - 1}")
    cfg = EngineArgs(model=path, device="cpu", pipeline_parallel_size=2).create_config()
    monkeypatch.delenv("VLLM_PP_LAYER_PARTITION")  # a worker whose environment lacks it
    sent = decode_config(encode_config(cfg))
    assert sent.pp_layer_partition == [1, layers - 1]
    first, last = (PPStage.for_rank(r, 1, sent.pp_layer_partition) for r in (0, 1))
    assert (first.start, first.end, last.start, last.end) == (0, 1, 1, layers)


def test_scheduler_never_puts_a_request_in_two_steps_in_flight():
    """No model: the second step leaves out the first step's requests; a request preempted while in flight is
    not re-admitted before that step's update, which keeps its sampled token."""
    kv = KVCacheManager(num_blocks=9, block_size=4, enable_prefix_caching=False)
    s = PipelineScheduler(kv, max_num_seqs=4, max_num_batched_tokens=8, max_model_len=64)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    for i in range(3):
        s.add_request(Request(f"r{i}", list(range(1, 9)), params, set(), 8, 0.0))
    first = s.schedule()
    second = s.schedule()
    ids1 = {x.request.request_id for x in first.scheduled}
    ids2 = {x.request.request_id for x in second.scheduled}
    assert ids1 == {"r0"} and ids2 == {"r1"}  # r0's whole prompt fills the budget; then r1, not r0 again
    assert s.schedule().scheduled[0].request.request_id == "r2"
    assert s.schedule().is_empty  # everyone is in flight
    s.update_from_output(first, {"r0": [42]})
    third = s.schedule()
    assert [x.request.request_id for x in third.scheduled] == ["r0"]
    # Preempt r0 while `third` is in flight: it waits for that step, then keeps the step's token.
    r0 = third.scheduled[0].request
    s._preempt(r0)
    assert r0.status == RequestStatus.PREEMPTED and all(x.request is not r0 for x in s.schedule().scheduled)
    s.update_from_output(third, {"r0": [43]})
    assert r0.output_token_ids == [42, 43] and "r0" not in s.in_flight
