"""Mixed-step graphs (worker/mixed_graphs.py) on the CPU, the forward rerun in place of a CUDA graph replay,
with the Triton attention backend (interpreted on the CPU, tiny sizes; like a graph, it reads the device-side
lengths): a step of decodes and prompt chunks of different lengths, padded to a token bucket and to the
bucket's request count (padding requests with no rows and seq_len 0, padding rows with slot -1), gives the
same hidden states as an eager forward of the same step and writes the same KV cache (padding writes
nothing); stale block-table rows of padding requests are never read. The CUDA replay: tests/gpu/test_gpu_kv_features.py.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import (tests/kernels do the same)

import pytest  # noqa: E402

pytest.importorskip("triton")

from graph_steps import assert_same_kv_writes, random_kv_caches, step_rows, step_table_and_meta  # noqa: E402

from pagoda.attention.backend import get_backend  # noqa: E402
from pagoda.worker.mixed_graphs import MixedGraphs  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU run (interpreted Triton on CPU tensors); the CUDA "
                    "replay is tests/gpu/test_gpu_kv_features.py")
def test_mixed_step_padding_matches_eager(tiny):
    """Two decodes and two prompt chunks (4 requests, 11 tokens) in the 16-token bucket of up to 8 requests;
    then a smaller step (2 requests) on the same bucket, whose stale rows 2..3 must not be read."""
    runner = tiny.llm("llama").llm_engine.core.runner
    model, bs, mml = runner.model, runner.block_size, runner.cfg.max_model_len
    backend = get_backend("triton")
    g = torch.Generator().manual_seed(0)
    caches = random_kv_caches(model, 12, bs, backend, g)  # an arbitrary earlier context
    mg = MixedGraphs(model, backend, caches, bs, mml, 8, torch.device("cpu"), buckets=(8, 16), use_graphs=False)
    mg.capture()
    assert mg.requests == {8: 8, 16: 8}
    assert mg.can_run(11, 4, 2) and not mg.can_run(17, 4, 2) and not mg.can_run(8, 9, 2)
    assert not mg.can_run(8, 2, mg.max_blocks + 1)

    steps = [([1, 5, 1, 4], [9, 0, 20, 3], [[1, 2], [3, 4], [5, 6], [7, 8]]),
             ([6, 3], [2, 11], [[9], [10, 11]])]
    for query_lens, ctx, blocks in steps:
        ids, pos, slots, seq_lens = step_rows(model, bs, query_lens, ctx, blocks, g)
        table, meta = step_table_and_meta(query_lens, seq_lens, blocks, slots, split_kv_len=mml)
        eager_caches = [(k.clone(), v.clone()) for k, v in caches]
        with torch.inference_mode():
            ref = model(torch.tensor(ids), torch.tensor(pos), eager_caches, meta, backend)
        hidden = mg.run(ids, pos, slots, query_lens, seq_lens, table)
        assert mg.last_bucket == 16 if sum(query_lens) > 8 else mg.last_bucket == 8
        torch.testing.assert_close(hidden, ref, rtol=1e-5, atol=1e-5)
        assert_same_kv_writes(caches, eager_caches, slots)  # the same K/V written, padding nothing
    assert mg.replays == 2


def test_bucket_set_follows_the_step_budget():
    from pagoda.worker.mixed_graphs import LARGE_MIXED_BUCKETS, MIXED_BUCKETS, mixed_buckets

    assert mixed_buckets(256) == mixed_buckets(512) == MIXED_BUCKETS  # budgets up to 512: the buckets as before
    assert mixed_buckets(600) == (*MIXED_BUCKETS, 600)
    assert mixed_buckets(1024) == (*MIXED_BUCKETS, 768, 1024)
    assert mixed_buckets(2048) == mixed_buckets(16384) == MIXED_BUCKETS + LARGE_MIXED_BUCKETS
    assert mixed_buckets(1500) == (*MIXED_BUCKETS, 768, 1024, 1500)
