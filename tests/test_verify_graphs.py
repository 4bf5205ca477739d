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

from graph_steps import assert_same_kv_writes, random_kv_caches, step_rows  # noqa: E402

from pagoda.attention.backend import get_backend  # noqa: E402
from pagoda.attention.metadata import AttentionMetadata  # noqa: E402
from pagoda.worker.verify_graphs import VerifyGraphs, verify_capture_sizes  # noqa: E402


@pytest.mark.parametrize("query_lens", [[3, 3, 3], [3, 1, 2]], ids=["full", "short-drafts"])
def test_verify_buffers_and_padding_match_eager(tiny, query_lens):
    """3 requests padded to the size-4 graph; with short drafts each request's rows are padded to q = 3 too."""
    runner = tiny.llm("llama").llm_engine.core.runner
    model, bs, mml = runner.model, runner.block_size, runner.cfg.max_model_len
    backend = get_backend("triton")
    g = torch.Generator().manual_seed(0)
    caches = random_kv_caches(model, 8, bs, backend, g)  # an arbitrary earlier context
    q, ctx, blocks = 3, [5, 17, 9], [[1, 2], [3, 4], [5, 6]]
    rows = sum(query_lens)
    ids, pos, slots, seq_lens = step_rows(model, bs, query_lens, ctx, blocks, g)
    table = torch.zeros(3, -(-mml // bs), dtype=torch.int32)
    for i, b in enumerate(blocks):
        table[i, : len(b)] = torch.tensor(b)

    eager_caches = [(k.clone(), v.clone()) for k, v in caches]
    qsl = [0, query_lens[0], query_lens[0] + query_lens[1], rows]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32), seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=table[:, :2], slot_mapping=torch.tensor(slots), max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), query_lens_cpu=query_lens, seq_lens_cpu=seq_lens, is_decode_only=False,
        split_kv_len=mml)
    with torch.inference_mode():
        ref_hidden = model(torch.tensor(ids), torch.tensor(pos), eager_caches, meta, backend)
        ref = model.compute_logits_raw(ref_hidden)

    assert verify_capture_sizes([1, 2, 4, 8, 64, 128]) == [1, 2, 4, 8, 64]
    vg = VerifyGraphs(model, backend, caches, bs, mml, [1, 2, 4], q, torch.device("cpu"), use_graphs=False)
    vg.capture()
    assert vg.can_run(query_lens, query_lens, seq_lens)
    assert not vg.can_run([q] * 5, [q] * 5, [9] * 5)  # above the largest size
    assert not vg.can_run([q, 4], [q, 4], [9, 9]) and not vg.can_run([q, 2], [q, 1], [9, 9])  # > q; a prompt chunk
    assert not vg.can_run([q], [q], [mml + 1])  # padded past the block table
    hidden = vg.run(ids, pos, slots, query_lens, seq_lens, table.numpy())
    logits, greedy = vg.last_logits()
    assert vg.last_size == 4 and vg.replays == 1
    torch.testing.assert_close(hidden, ref_hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(greedy, ref.argmax(-1))
    assert_same_kv_writes(caches, eager_caches, slots)  # the same K/V written, padding nothing
