"""The transformers fallback under CUDA graphs, checked on the CPU.

A decode graph (pagoda/worker/cuda_graphs.py) captures one forward over static buffers (token ids,
positions, slots, sequence lengths, block tables: the :class:`AttentionMetadata` it passes holds views of
them) and replays its kernels after the buffers are refilled in place. ``graph_replay.OpTrace`` does the
same with the forward's aten ops on the CPU. If the fallback's forward (HF modules + pagoda's attention
shim) read anything but those buffers' contents on the device, or froze a host-side value at capture, the
replayed steps would differ from eager steps with fresh metadata. One test runs pagoda's own DecodeGraphs
(padding rows included) with that stand-in in place of ``torch.cuda.CUDAGraph``. The start-up check
(:mod:`pagoda.models.transformers_graphs`) must pass for the tested architectures and fail, turning graphs
off, for HF's dynamic rope (a branch on ``max(position_ids)`` on the host).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil

import pytest
import torch
from graph_replay import OpTrace

from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.torch_ref import TorchAttentionBackend
from pagoda.worker.kv_cache import allocate_kv_caches

BLOCK, MAX_LEN = 4, 32
MAX_BLOCKS = MAX_LEN // BLOCK
PROMPT_LENS = [5, 11, 3]  # three requests decoding together, at different context lengths
STEPS = 4


@pytest.fixture(autouse=True)
def _aten_attention(monkeypatch):
    """The stand-in records aten ops: attention by the torch backend's SDPA path, not the native CPU decode kernel (a
    ctypes call reading the step's host-side lists, which no graph records; the CPU engine captures no graphs, and on
    a GPU the Triton backend runs)."""
    from pagoda.attention import cpu_decode_native

    monkeypatch.setattr(cpu_decode_native, "ENABLED", False)


class _GraphSafeTorchBackend(TorchAttentionBackend):
    """The CPU backend's decode path with a K/V write that never looks at the slots on the host (as the Triton
    backend's on the GPU): padding rows (slot -1) write into the cache's last block, which no request owns."""

    def write_kv(self, key, value, k_cache, v_cache, slot_mapping, k_scale=1.0, v_scale=1.0):
        slots = torch.where(slot_mapping >= 0, slot_mapping, (k_cache.shape[0] - 1) * BLOCK)
        blk = torch.div(slots, BLOCK, rounding_mode="floor")
        k_cache[blk, :, slots - blk * BLOCK] = key
        v_cache[blk, :, slots - blk * BLOCK] = value


def _load(path, impl: str = "transformers"):
    from pagoda.config import EngineArgs
    from pagoda.models.loader import load_model

    return load_model(EngineArgs(model=str(path), model_impl=impl, dtype="float32").create_config())


def _tables() -> torch.Tensor:
    """Request i owns blocks 1 + i * MAX_BLOCKS ... (block 0 is the null block)."""
    return (1 + torch.arange(len(PROMPT_LENS) * MAX_BLOCKS, dtype=torch.int32)).view(len(PROMPT_LENS), MAX_BLOCKS)


def _slots(tables: torch.Tensor, req: int, positions: torch.Tensor) -> torch.Tensor:
    return tables[req, positions // BLOCK].long() * BLOCK + positions % BLOCK


def _caches(model):
    """Block 0: the null block; then MAX_BLOCKS per request; the last: where padding rows write."""
    return allocate_kv_caches(model.num_layers, 2 + len(PROMPT_LENS) * MAX_BLOCKS, BLOCK, model.num_kv_heads,
                              model.head_dim, torch.float32, torch.device("cpu"), "HND")


def _prefill(model, caches, tables: torch.Tensor) -> None:
    backend = TorchAttentionBackend()
    for i, n in enumerate(PROMPT_LENS):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, model.shape.vocab_size, (n,), generator=g)
        pos = torch.arange(n)
        nb = -(-n // BLOCK)
        meta = AttentionMetadata(
            query_start_loc=torch.tensor([0, n], dtype=torch.int32), seq_lens=torch.tensor([n], dtype=torch.int32),
            block_tables=tables[i : i + 1, :nb], slot_mapping=_slots(tables, i, pos), max_query_len=n,
            max_seq_len=n, query_lens_cpu=[n], seq_lens_cpu=[n],
        )
        model(ids, pos, caches, meta, backend)


def _decode_meta(seq_lens, tables, slots, max_seq_len: int, seq_lens_cpu: list[int]) -> AttentionMetadata:
    b = len(seq_lens_cpu)
    return AttentionMetadata(
        query_start_loc=torch.arange(b + 1, dtype=torch.int32), seq_lens=seq_lens, block_tables=tables,
        slot_mapping=slots, max_query_len=1, max_seq_len=max_seq_len, query_lens_cpu=[1] * b,
        seq_lens_cpu=seq_lens_cpu, is_decode_only=True, split_kv_len=MAX_LEN,
    )


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "phi", "cohere"])
@torch.inference_mode()
def test_decode_replays_from_static_buffers(tiny, arch):
    model = _load(tiny.path(arch))
    assert model.supports_cuda_graphs, model._graph_problem
    b = len(PROMPT_LENS)
    caches = _caches(model)
    tables = _tables()
    _prefill(model, caches, tables)
    eager_caches = [(k.clone(), v.clone()) for k, v in caches]
    # The graph runner's static buffers and the metadata over them (as DecodeGraphs._meta builds it).
    ids, pos, slots = (torch.zeros(b, dtype=torch.int64) for _ in range(3))
    seq_lens = torch.zeros(b, dtype=torch.int32)
    static_tables = torch.zeros(b, MAX_BLOCKS, dtype=torch.int32)
    static_meta = _decode_meta(seq_lens, static_tables, slots, MAX_LEN, [MAX_LEN] * b)
    backend, trace = _GraphSafeTorchBackend(), OpTrace()
    lens = torch.tensor(PROMPT_LENS)
    g = torch.Generator().manual_seed(123)
    for step in range(STEPS):
        new_ids = torch.randint(0, model.shape.vocab_size, (b,), generator=g)
        new_slots = torch.stack([_slots(tables, i, lens[i : i + 1])[0] for i in range(b)])
        nb = int((lens.max() + BLOCK) // BLOCK)
        meta = _decode_meta((lens + 1).int(), tables[:, :nb].clone(), new_slots, int(lens.max()) + 1,
                            (lens + 1).tolist())
        want = model(new_ids, lens.clone(), eager_caches, meta, TorchAttentionBackend()).clone()
        ids.copy_(new_ids), pos.copy_(lens), slots.copy_(new_slots), seq_lens.copy_(lens + 1)
        static_tables.copy_(tables)
        if step == 0:
            with trace:
                out = model(ids, pos, caches, static_meta, backend)
        else:
            trace.replay()
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5, msg=f"{arch} step {step}")
        assert torch.equal(model.compute_logits(out).argmax(-1), model.compute_logits(want).argmax(-1))
        lens += 1
    for (k, v), (ek, ev) in zip(caches, eager_caches, strict=True):  # the replays wrote the same K/V
        torch.testing.assert_close(k, ek, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v, ev, rtol=1e-5, atol=1e-5)


def test_replay_freezes_host_values():
    """The stand-in is strict: a value taken to the host at capture stays frozen in the replay."""
    x = torch.ones(3)
    trace = OpTrace()
    with trace:
        y = x * float(x.sum())  # the host reads x: frozen at 3.0
        z = x * x.sum()  # stays on the device
    x.fill_(2.0)
    trace.replay()
    assert torch.equal(z, torch.full((3,), 12.0)) and torch.equal(y, torch.full((3,), 6.0))  # y != 2 * 6


def test_dynamic_rope_runs_eager(tiny, tmp_path, caplog):
    """HF's dynamic rope decides on the host whether to recompute its frequencies: no graphs, said why."""
    folder = tmp_path / "llama-dynamic-rope"
    shutil.copytree(tiny.path("llama"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_scaling"] = {"rope_type": "dynamic", "factor": 2.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    model = _load(folder)
    with caplog.at_level(logging.DEBUG, logger="pagoda"):
        assert not model.supports_cuda_graphs
    assert "is_nonzero" in model._graph_problem
    assert any("runs without CUDA graphs" in r.getMessage() for r in caplog.records)


class _TraceGraph:
    """``torch.cuda.CUDAGraph`` on the CPU: capture records the ops (graph_replay.OpTrace), replay re-runs them."""

    def __init__(self) -> None:
        self.trace = OpTrace()

    def replay(self) -> None:
        self.trace.replay()


@contextlib.contextmanager
def _capture(graph: _TraceGraph, pool=None):
    with graph.trace:
        yield


@torch.inference_mode()
def test_decode_graphs_runner_with_fallback(tiny, monkeypatch):
    """pagoda's DecodeGraphs (capture per size, pinned staging, padded replay, logits and argmax in the graph)
    around the fallback, with the CPU stand-in for CUDA graphs: replayed steps of 3 requests (padded to 4)
    equal eager steps."""
    from pagoda.layers import argmax
    from pagoda.worker import cuda_graphs

    # The stand-in records torch ops; the CPU's native argmax is a ctypes call it cannot replay (a real graph is CUDA's
    # and takes the Triton argmax), so the captured argmax here is torch's.
    monkeypatch.setattr(argmax, "ENABLED", False)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _TraceGraph)
    monkeypatch.setattr(torch.cuda, "graph", _capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(cuda_graphs, "PinnedStaging", functools.partial(cuda_graphs.PinnedStaging, pin=False))
    model = _load(tiny.path("llama"))
    caches, tables, b = _caches(model), _tables(), len(PROMPT_LENS)
    _prefill(model, caches, tables)
    eager_caches = [(k.clone(), v.clone()) for k, v in caches]
    graphs = cuda_graphs.DecodeGraphs(model, _GraphSafeTorchBackend(), caches, BLOCK, MAX_LEN, [1, 2, 4],
                                      torch.device("cpu"))
    graphs.capture()
    lens = torch.tensor(PROMPT_LENS)
    g = torch.Generator().manual_seed(7)
    for step in range(STEPS):
        ids = torch.randint(0, model.shape.vocab_size, (b,), generator=g)
        slots = torch.stack([_slots(tables, i, lens[i : i + 1])[0] for i in range(b)])
        out = graphs.run(ids.tolist(), lens.tolist(), slots.tolist(), (lens + 1).tolist(), tables.numpy())
        assert graphs.last_size == 4
        nb = int((lens.max() + BLOCK) // BLOCK)
        meta = _decode_meta((lens + 1).int(), tables[:, :nb].clone(), slots, int(lens.max()) + 1, (lens + 1).tolist())
        want = model(ids, lens.clone(), eager_caches, meta, TorchAttentionBackend())
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5, msg=f"step {step}")
        logits, greedy = graphs.last_logits(b)
        torch.testing.assert_close(logits.float(), model.compute_logits(want), rtol=1e-5, atol=1e-5)
        assert torch.equal(greedy, model.compute_logits(want).argmax(-1))
        lens += 1
