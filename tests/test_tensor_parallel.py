"""Tensor parallelism on the CPU (gloo): TP=2 gives TP=1's tokens and logprobs (and HF's), a dead rank fails
the engine fast, bad flags fail start-up naming the flag (GUIDE §4: TP 1 versus 2, fp32, greedy)."""

from __future__ import annotations

import pytest
import torch
from engine_checks import (
    PROMPTS,
    assert_engine_clean,
    assert_follows_hf_top5,
    assert_outputs_close,
    assert_start_up_error,
    greedy,
    token_ids,
)

from pagoda.distributed.parallel_state import TPGroup
from pagoda.layers.parallel_linear import ColumnParallelLinear, RowParallelLinear, attention_heads

ATOL = 1e-4
# Small steps: prompts are prefilled in chunks that share steps with decodes.
TP_KW = {"max_num_batched_tokens": 48, "max_num_seqs": 8, "device": "cpu"}


def _tp_llm(tiny, arch: str, tp: int, **kw):
    from pagoda import LLM

    return LLM(str(tiny.path(arch)), dtype="float32", tensor_parallel_size=tp, **{**TP_KW, **kw})


def _close(llm) -> None:
    llm.llm_engine.shutdown()


def test_tp2_matches_tp1_and_hf_with_chunked_prefill(tiny):
    """Every prompt in one batch, chunked prefill, logprobs and prompt logprobs: TP=2 equals TP=1 (tokens equal,
    logprobs within 1e-4) and follows HF by the top-5 rule."""
    params = greedy(max_tokens=16, logprobs=5, prompt_logprobs=5)
    one = tiny.llm("llama", **TP_KW).generate(PROMPTS, params, use_tqdm=False)
    llm = _tp_llm(tiny, "llama", 2)
    try:
        two = llm.generate(PROMPTS, params, use_tqdm=False)
        assert_engine_clean(llm)
    finally:
        _close(llm)
    assert_outputs_close(one, two, ATOL)
    assert_follows_hf_top5(tiny, "llama", two, 16)


@pytest.mark.parametrize("arch,tp", [("qwen2", 2), ("qwen3", 2), ("phi3", 2), ("llama", 4)])
def test_tp_matches_tp1_per_architecture(tiny, arch, tp):
    """qkv bias (Qwen2), q/k norms (Qwen3), checkpoint-fused qkv/gate_up (Phi-3); TP=4 on 2 KV heads
    replicates each KV head on two ranks."""
    prompts = PROMPTS[2:4] + PROMPTS[8:9]
    one = tiny.llm(arch, **TP_KW).generate(prompts, greedy(max_tokens=8), use_tqdm=False)
    llm = _tp_llm(tiny, arch, tp)
    try:
        assert token_ids(llm.generate(prompts, greedy(max_tokens=8), use_tqdm=False)) == token_ids(one)
    finally:
        _close(llm)


def test_tp2_with_async_scheduling(tiny, monkeypatch):
    """Async scheduling: decode inputs the host does not know yet come from rank 0's previous sample, broadcast
    to the workers; the tokens equal TP=1's."""
    from pagoda.distributed.executor import MultiprocExecutor

    prompts = PROMPTS[:4]
    one = tiny.llm("llama", **TP_KW).generate(prompts, greedy(max_tokens=12), use_tqdm=False)
    filled = []
    real = MultiprocExecutor.broadcast_step

    def counting(self, inputs, *rest):
        filled.append(bool(inputs.fills))
        real(self, inputs, *rest)

    monkeypatch.setattr(MultiprocExecutor, "broadcast_step", counting)
    llm = _tp_llm(tiny, "llama", 2, async_scheduling=True)
    try:
        assert token_ids(llm.generate(prompts, greedy(max_tokens=12), use_tqdm=False)) == token_ids(one)
        assert_engine_clean(llm)
    finally:
        _close(llm)
    assert sum(filled) >= 8  # most decode steps ran on tokens the host had not seen


def test_killed_rank_fails_the_engine_fast(tiny, monkeypatch):
    from pagoda.distributed.executor import WorkerDied

    # The collectives' timeout at a day: a detection that waited for it would hang (pytest-timeout) instead of
    # raising, so no wall-clock bound is needed (it would depend on the machine's speed).
    monkeypatch.setenv("PAGODA_DIST_TIMEOUT_S", "86400")
    llm = _tp_llm(tiny, "llama", 2)
    try:
        llm.generate(PROMPTS[:1], greedy(max_tokens=2), use_tqdm=False)
        executor = llm.llm_engine.core.runner.executor
        executor.procs[0].kill()
        executor.procs[0].wait()
        with pytest.raises(WorkerDied, match=r"tensor-parallel rank 1 of 2 died \(exit code -9\)"):
            llm.generate(PROMPTS[:2], greedy(max_tokens=4), use_tqdm=False)
    finally:
        _close(llm)


def test_rank_that_dies_mid_step_is_reported(tiny, monkeypatch):
    """A worker killed while rank 0 waits in the all-reduce: the broken collective becomes WorkerDied."""
    from pagoda.distributed.executor import MultiprocExecutor, WorkerDied

    llm = _tp_llm(tiny, "llama", 2)
    try:
        executor = llm.llm_engine.core.runner.executor
        real = MultiprocExecutor.broadcast_step

        def kill_after_send(self, inputs, copies, *rest):
            real(self, inputs, copies, *rest)
            self.procs[0].kill()  # the step was sent; rank 0 now meets a dead peer in its first all-reduce

        monkeypatch.setattr(MultiprocExecutor, "broadcast_step", kill_after_send)
        with pytest.raises(WorkerDied, match="tensor-parallel rank 1 of 2 died") as exc:
            llm.generate(PROMPTS[:1], greedy(max_tokens=2), use_tqdm=False)
        assert exc.value.__cause__ is not None  # the collective's own error is kept
        assert executor.procs[0].poll() is not None
    finally:
        monkeypatch.undo()
        _close(llm)


@pytest.mark.parametrize("arch,kw,match", [
    ("llama", {"tensor_parallel_size": 3}, "--tensor-parallel-size 3 does not divide the model's 4 attention heads"),
    ("gpt_neox", {"tensor_parallel_size": 2}, r"GPTNeoXForCausalLM \(transformers implementation\)"),
    ("llama", {"pipeline_parallel_size": 2, "async_scheduling": True}, "--no-async-scheduling"),
    ("llama", {"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "quantization": "fp8"},
     "--tensor-parallel-size 2 --pipeline-parallel-size 2: quantized checkpoints are not split into pipeline stages"),
    ("mixtral", {"pipeline_parallel_size": 2}, "MixtralForCausalLM has no pipeline stages yet"),
    ("gemma2", {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, "Gemma2ForCausalLM has no pipeline stages"),
    ("llama", {"data_parallel_size": 2, "distributed_executor_backend": "ray"},
     "--data-parallel-size 2: .* --distributed-executor-backend ray does not combine"),
    ("llama", {"tensor_parallel_size": 0}, "--tensor-parallel-size. must be at least 1"),
    ("llama", {"tensor_parallel_size": 2, "speculative_config": {"method": "ngram", "num_speculative_tokens": 2}},
     "speculative decoding .* runs on one device"),
])
def test_bad_tensor_parallel_input_fails_at_start_up(tiny, arch, kw, match):
    assert_start_up_error(tiny.path(arch), kw, match)


def test_more_ranks_than_cuda_devices_is_refused(monkeypatch):
    from pagoda.distributed.support import check_tensor_parallel

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128}
    with pytest.raises(ValueError, match="--tensor-parallel-size 2: only 1 CUDA device"):
        check_tensor_parallel(2, None, arch="LlamaForCausalLM", model_impl="pagoda", quantized=False, pooling=False,
                              device=torch.device("cuda"), hf_config=cfg, kv_offloading=False, async_scheduling=None)


def test_shards_concatenate_to_the_checkpoint():
    """Loading per rank: column shards (q | k | v split by heads, KV replicated below the rank count) and row
    shards put back together are the full weight."""
    torch.manual_seed(0)
    heads, kv, d, hidden = 4, 2, 8, 16
    q, k, v = torch.randn(heads * d, hidden), torch.randn(kv * d, hidden), torch.randn(kv * d, hidden)
    o = torch.randn(hidden, heads * d)
    for n in (2, 4):
        qs, ks, os_ = [], [], []
        for r in range(n):
            tp = TPGroup(r, n)
            h, kvh, first = attention_heads(heads, kv, tp)
            qkv = ColumnParallelLinear(hidden, (heads * d, kv * d, kv * d), tp, False, None,
                                       (((r * h * d, h * d),), ((first * d, kvh * d),), ((first * d, kvh * d),)))
            for i, t in enumerate((q, k, v)):
                qkv.load_shard("weight", t, i)
            wq, wk, wv = qkv.weight.split([h * d, kvh * d, kvh * d])
            assert torch.equal(wk, k[first * d:(first + kvh) * d]) and torch.equal(wv, v[first * d:(first + kvh) * d])
            qs.append(wq)
            ks.append(first)
            row = RowParallelLinear(heads * d, hidden, tp)
            row.load_shard("weight", o, None)
            os_.append(row.weight)
        assert torch.equal(torch.cat(qs), q) and torch.equal(torch.cat(os_, dim=1), o)
        assert ks == ([0, 1] if n == 2 else [0, 0, 1, 1])  # each query head keeps its own KV head


def test_head_split_errors_name_the_flag():
    with pytest.raises(ValueError, match="--tensor-parallel-size 4 does not divide the model's 6 KV heads"):
        attention_heads(12, 6, TPGroup(0, 4))
    with pytest.raises(ValueError, match="--tensor-parallel-size 6 is not a multiple of the model's 4 KV heads"):
        attention_heads(12, 4, TPGroup(0, 6))
    assert attention_heads(12, 4, TPGroup(5, 12)) == (1, 1, 1)  # ranks 3..5 share KV head 1
