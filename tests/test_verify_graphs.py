"""Verify-step graphs (worker/verify_graphs.py) on the CPU, the forward rerun in place of a CUDA graph
replay, with the Triton attention backend (interpreted on the CPU, tiny sizes; like a graph, it reads
the device-side lengths): the static buffers, the padding requests (slot -1, seq_len q, null block
table) and the constant ``query_start_loc`` give the same logits as an eager forward of the same verify
batch and write the same KV cache (padding writes nothing). The CUDA replay: tests/gpu/test_gpu_spec_verify_graphs.py.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import (tests/kernels do the same)

import pytest  # noqa: E402

pytest.importorskip("triton")

from pagoda.attention.backend import get_backend  # noqa: E402
from pagoda.attention.metadata import AttentionMetadata  # noqa: E402
from pagoda.worker.kv_cache import allocate_kv_caches  # noqa: E402
from pagoda.worker.verify_graphs import VerifyGraphs, verify_capture_sizes  # noqa: E402


def test_verify_buffers_and_padding_match_eager(tiny):
    runner = tiny.llm("llama").llm_engine.core.runner
    model, bs, mml = runner.model, runner.block_size, runner.cfg.max_model_len
    backend = get_backend("triton")
    g = torch.Generator().manual_seed(0)
    caches = allocate_kv_caches(model.num_layers, 8, bs, model.num_kv_heads, model.head_dim, torch.float32,
                                torch.device("cpu"), getattr(backend, "kv_layout", "NHD"))
    for k, v in caches:  # an arbitrary earlier context
        k.copy_(torch.randn(k.shape, generator=g))
        v.copy_(torch.randn(v.shape, generator=g))
    q, ctx, blocks = 3, [5, 17, 9], [[1, 2], [3, 4], [5, 6]]
    ids = torch.randint(0, model.shape.vocab_size, (3 * q,), generator=g).tolist()
    pos = [p for c in ctx for p in range(c, c + q)]
    slots = [blocks[i][p // bs] * bs + p % bs for i, c in enumerate(ctx) for p in range(c, c + q)]
    seq_lens = [c + q for c in ctx]
    width = -(-mml // bs)
    table = torch.zeros(3, width, dtype=torch.int32)
    for i, b in enumerate(blocks):
        table[i, : len(b)] = torch.tensor(b)

    eager_caches = [(k.clone(), v.clone()) for k, v in caches]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, q, 2 * q, 3 * q], dtype=torch.int32), seq_lens=torch.tensor(seq_lens,
        dtype=torch.int32), block_tables=table[:, :2], slot_mapping=torch.tensor(slots), max_query_len=q,
        max_seq_len=max(seq_lens), query_lens_cpu=[q] * 3, seq_lens_cpu=seq_lens, is_decode_only=False,
        split_kv_len=mml)
    with torch.inference_mode():
        ref = model.compute_logits_raw(model(torch.tensor(ids), torch.tensor(pos), eager_caches, meta, backend))

    assert verify_capture_sizes([1, 2, 4, 8, 64, 128]) == [1, 2, 4, 8, 64]
    vg = VerifyGraphs(model, backend, caches, bs, mml, [1, 2, 4], q, torch.device("cpu"), use_graphs=False)
    vg.capture()
    assert vg.can_run([q] * 3, [q] * 3, 2) and not vg.can_run([q, q, 1], [q, q, 1], 2)
    assert not vg.can_run([q] * 5, [q] * 5, 2) and not vg.can_run([q] * 3, [1] * 3, 2)
    vg.run(ids, pos, slots, seq_lens, table.numpy())  # 3 requests padded to 4
    logits, greedy = vg.last_logits(3 * q)
    assert vg.last_size == 4 and vg.replays == 1
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(greedy, ref.argmax(-1))
    for (k, v), (ek, ev) in zip(caches, eager_caches, strict=True):
        assert torch.equal(k, ek) and torch.equal(v, ev)
