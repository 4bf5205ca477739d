"""Deterministic (batch-invariant) mode, ``--deterministic`` / ``VLLM_BATCH_INVARIANT=1`` (pagoda/layers/
batch_invariant.py): greedy token ids AND logprobs bitwise identical whatever the batch size, the other
requests, prefill chunking, prefix-cache state and preemption, in bf16 on the CPU (tiny random Llama and the
real default model). Also the kernel properties the mode relies on, measured here so a torch upgrade that
breaks them fails loudly, and the attention's values against a plain reference.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from engine_checks import PROMPTS, greedy

from pagoda.attention import deterministic as det_attn
from pagoda.attention.metadata import AttentionMetadata
from pagoda.layers.batch_invariant import ROW_TILE, row_tiled

MIXED = ["Paris is the capital of", "🙂 emoji テキスト", "The quick brown fox jumps over the lazy dog. " * 3,
         "x", "Continuous batching lets new requests join a running batch. " * 5]


# ------------------------------------------------------------------ kernel properties
def _rows_alone(fn, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(x[i : i + 1]) for i in range(x.shape[0])])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_row_tiled_linear_is_row_invariant(dtype):
    """At a fixed M a GEMM row does not depend on the other rows: row_tiled(F.linear) of any batch equals each
    row computed alone; plain F.linear at changing M is not relied on."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(96, 160, generator=g) * 0.05).to(dtype)
    x = torch.randn(70, 160, generator=g).to(dtype)
    alone = _rows_alone(lambda t: row_tiled(lambda u: F.linear(u, w), t), x)
    for m in (1, 5, ROW_TILE, ROW_TILE + 1, 70):
        for start in (0, 3):
            rows = x[start : start + m]
            assert torch.equal(row_tiled(lambda u: F.linear(u, w), rows), alone[start : start + rows.shape[0]])


def test_int4pack_is_row_invariant():
    """The int4pack CPU kernel (the default model's linears) computes each row alone, at every M."""
    from pagoda.quantization.kernels import cpu_woq

    if not cpu_woq.int4_supported(4, 32, 64):
        pytest.skip("no int4pack CPU kernel in this torch")
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (64, 128), generator=g, dtype=torch.uint8)
    s = torch.rand(64, 4, generator=g) * 0.01 + 0.001
    parts = cpu_woq.pack_int4(codes, s, -8 * s, 4, torch.bfloat16)
    x = torch.randn(200, 128, generator=g).to(torch.bfloat16)

    def fn(t):
        return cpu_woq.int4_matmul(t, parts, 32, per_row=True)

    alone = _rows_alone(fn, x)
    for m in (2, 9, 33, 129, 200):
        assert torch.equal(fn(x[:m]), alone[:m])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bmm_columns_do_not_depend_on_n(dtype):
    """What the CPU attention relies on: at a fixed (M, K), a bmm column does not depend on N (>= MIN_COLUMNS,
    the fewest an item has) nor on the number of batch items."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(6, det_attn.KEY_BLOCK, 16, generator=g).to(dtype)
    b = torch.randn(6, 16, 300, generator=g).to(dtype)
    full = torch.bmm(a, b)
    low = det_attn.MIN_COLUMNS
    for n in (low, low + 1, 2 * low, 64, 65, 255):
        for items in (1, 6):
            assert torch.equal(torch.bmm(a[:items], b[:items, :, 1 : n + 1].contiguous()), full[:items, :, 1 : n + 1])


# ------------------------------------------------------------------ CPU attention
def _cache(g, blocks=12, hkv=2, bs=4, d=16, dtype=torch.bfloat16):
    k = torch.randn(blocks, hkv, bs, d, generator=g).to(dtype)
    return k, torch.randn(blocks, hkv, bs, d, generator=g).to(dtype)


def _meta(q_lens, s_lens, tables) -> AttentionMetadata:
    starts = [0]
    for q in q_lens:
        starts.append(starts[-1] + q)
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    return AttentionMetadata(torch.tensor(starts, dtype=torch.int32), torch.tensor(s_lens, dtype=torch.int32), bt,
                             torch.zeros(sum(q_lens), dtype=torch.long), max(q_lens), max(s_lens), list(q_lens),
                             list(s_lens), is_decode_only=all(q == 1 for q in q_lens))


def _reference(q, k_cache, v_cache, table, s_len, scale, window=None):
    """One request's queries (the last q.shape[0] positions) in float64, dense causal softmax."""
    hkv = k_cache.shape[1]
    k = torch.cat([k_cache[b] for b in table], dim=1)[:, :s_len].double()  # [Hkv, S, D]
    v = torch.cat([v_cache[b] for b in table], dim=1)[:, :s_len].double()
    n, h, _ = q.shape
    k, v = k.repeat_interleave(h // hkv, 0), v.repeat_interleave(h // hkv, 0)
    s = torch.einsum("qhd,hkd->hqk", q.double(), k) * scale
    qpos = torch.arange(s_len - n, s_len)[:, None]
    kpos = torch.arange(s_len)[None, :]
    vis = kpos <= qpos
    if window is not None:
        vis &= kpos > qpos - window
    s = s.masked_fill(~vis, float("-inf"))
    return torch.einsum("hqk,hkd->qhd", torch.softmax(s, -1), v)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("native", [True, False])  # the per-row C kernel, and the torch path (FP8 caches, float16)
def test_cpu_attention_values_and_invariance(window, native, monkeypatch):
    from pagoda.attention import cpu_det_native

    monkeypatch.setattr(cpu_det_native, "ENABLED", native)
    if native and shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the torch path is used")
    if native:
        assert cpu_det_native._lib() is not None, "the native kernel did not build or failed its self-check"
    g = torch.Generator().manual_seed(3)
    k_cache, v_cache = _cache(g)
    table, s_len = [3, 7, 1, 9, 4, 11, 2], 26  # a request of 26 positions over 7 blocks of 4
    q_all = torch.randn(s_len, 4, 16, generator=g).to(torch.bfloat16)
    scale = 0.25
    whole = det_attn.attention(q_all, k_cache, v_cache, _meta([s_len], [s_len], [table]), scale, window)
    ref = _reference(q_all, k_cache, v_cache, table, s_len, scale, window)
    assert (whole.double() - ref).abs().max() < 2e-2  # bf16 output rounding
    # The same rows in chunks of 7, one at a time (decode), and beside another request: bitwise equal.
    chunks = [(0, 7), (7, 14), (14, 21), (21, 26)]
    for a, b in chunks:
        out = det_attn.attention(q_all[a:b], k_cache, v_cache, _meta([b - a], [b], [table]), scale, window)
        assert torch.equal(out, whole[a:b])
    other = torch.randn(3, 4, 16, generator=g).to(torch.bfloat16)
    for p in (0, 9, 25):
        q = torch.cat([other[:2], q_all[p : p + 1], other[2:]])
        meta = _meta([2, 1, 1], [5, p + 1, 30], [[5, 6], table, [0, 1, 2, 3, 4, 5, 6, 8]])
        out = det_attn.attention(q, k_cache, v_cache, meta, scale, window)
        assert torch.equal(out[2], whole[p])


# ------------------------------------------------------------------ engine, tiny Llama in bf16
def _key(outs):
    return [(list(o.outputs[0].token_ids),
             [sorted((t, lp.logprob) for t, lp in d.items()) for d in o.outputs[0].logprobs]) for o in outs]


def _run(path, prompts, **kw):
    from pagoda import LLM

    llm = LLM(str(path), dtype="bfloat16", deterministic=True, **kw)
    return llm, _key(llm.generate(prompts, greedy(max_tokens=16, logprobs=3), use_tqdm=False))


@pytest.fixture(scope="module")
def tiny_base(tiny):
    path = tiny.path("llama")
    _, base = _run(path, PROMPTS)
    return path, base


def test_tiny_batch_sizes_and_mixing(tiny_base):
    path, base = tiny_base
    llm, _ = _run(path, PROMPTS[:1], max_num_seqs=8)
    one = [_key(llm.generate([p], greedy(max_tokens=16, logprobs=3), use_tqdm=False))[0] for p in PROMPTS]
    assert one == base, "batch size 1 vs all prompts at once"
    mixed = _key(llm.generate(MIXED[:3] + PROMPTS + MIXED[3:], greedy(max_tokens=16, logprobs=3), use_tqdm=False))
    assert mixed[3 : 3 + len(PROMPTS)] == base, "mixed with other requests, max_num_seqs=8"


def test_tiny_chunked_prefill_prefix_cache_preemption(tiny_base):
    path, base = tiny_base
    assert _run(path, PROMPTS, max_num_batched_tokens=7, max_num_seqs=8)[1] == base, "prefill chunks of 7"
    assert _run(path, PROMPTS, enable_chunked_prefill=False, max_num_batched_tokens=512)[1] == base
    assert _run(path, PROMPTS, enable_prefix_caching=False)[1] == base, "prefix caching off"
    llm, cold = _run(path, PROMPTS)
    warm = _key(llm.generate(PROMPTS, greedy(max_tokens=16, logprobs=3), use_tqdm=False))
    assert cold == base and warm == base, "prefix cache warm"
    llm, pre = _run(path, PROMPTS, num_gpu_blocks_override=24)
    assert pre == base, "forced preemption (24 KV blocks)"
    assert llm.llm_engine.core.scheduler.num_preemptions_total > 0


def test_tiny_fp32_chunks_and_batch(tiny):
    """fp32 (oneDNN is M-dependent from M=2 in fp32: the fixed row tile matters most here)."""
    from pagoda import LLM

    path, prompts, sp = tiny.path("llama"), PROMPTS[6:], greedy(max_tokens=8, logprobs=3)
    base = _key(LLM(str(path), dtype="float32", deterministic=True).generate(prompts, sp, use_tqdm=False))
    llm = LLM(str(path), dtype="float32", deterministic=True, max_num_batched_tokens=7, max_num_seqs=8)
    assert _key(llm.generate(prompts, sp, use_tqdm=False)) == base, "prefill chunks of 7"
    assert [_key(llm.generate([p], sp, use_tqdm=False))[0] for p in prompts] == base, "one at a time"


def test_env_switch_and_refusals(tiny, monkeypatch):
    from pagoda.config import EngineArgs

    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    cfg = EngineArgs(model=str(tiny.path("llama")), device="cpu").create_config()
    assert cfg.deterministic
    monkeypatch.delenv("VLLM_BATCH_INVARIANT")
    with pytest.raises(ValueError, match="--deterministic.*tensor-parallel-size 1"):
        EngineArgs(model=str(tiny.path("llama")), device="cpu", deterministic=True,
                   tensor_parallel_size=2).create_config()
    from pagoda import LLM

    with pytest.raises(ValueError, match="--deterministic.*mixture-of-experts"):
        LLM(str(tiny.path("mixtral")), deterministic=True)


# ------------------------------------------------------------------ the real default model
@pytest.mark.default_model
def test_default_model_prefix_cache_and_batch():
    """The default model (GGUF Q4_1, bf16 on the CPU) used to answer differently with prefix caching on and
    off (int4 GEMV for small steps, a dequantized GEMM for prefills of 128+ rows; SDPA kernels per shape).
    One engine: a first request with a cold cache, then the same prompt among others (its prefix a cache
    hit, batch 3), then each alone again (warm cache, batch 1)."""
    from pagoda import LLM, SamplingParams

    sys_prompt = "You are a helpful assistant. Answer briefly and precisely, in English, with facts only. "
    prompts = [sys_prompt + q for q in ["What is 17 times 3?", "Who wrote Hamlet?", "Why is the sky blue?"]]
    sp = SamplingParams(temperature=0.0, max_tokens=12, logprobs=2)
    llm = LLM(deterministic=True)
    cold = _key(llm.generate(prompts[:1], sp, use_tqdm=False))
    batch = _key(llm.generate(prompts, sp, use_tqdm=False))
    assert llm.llm_engine.core.kv.prefix_cache_hits > 0
    assert batch[0] == cold[0], "cold cache, alone vs prefix-cache hit in a batch of 3"
    alone = [_key(llm.generate([p], sp, use_tqdm=False))[0] for p in prompts]
    assert alone == batch, "batch of 3 vs each alone with a warm cache"
