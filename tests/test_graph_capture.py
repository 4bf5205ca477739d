"""The graph-capture helper (pagoda/worker/graph_capture.py) on the CPU, CUDA's graph calls stubbed: the whole body
runs twice eagerly before it is captured, so nothing of it (a library handle, a workspace, a kernel's first launch)
happens for the first time inside a capture.

Why it matters (RESULTS.md, H200 session 11): a second start of a GPTQ model reused its Triton manifest, skipped the
memory-profile forward and failed in the decode-graph capture: the warm-ups ran the forward only, so the logits ran for
the first time inside the capture (most likely the culprit: the LM head's cuBLAS call, the only cuBLAS call of a GPTQ
decode step, creating its handle there). Warming up the whole body fixed it.
"""

from __future__ import annotations

import contextlib

import torch

from pagoda.worker import graph_capture


def test_the_body_runs_eagerly_twice_before_its_capture(monkeypatch):
    events: list[str] = []
    capturing = {"on": False}

    @contextlib.contextmanager
    def fake_graph(g, pool=None):
        capturing["on"] = True
        yield
        capturing["on"] = False

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    g = graph_capture.capture_graph(lambda: events.append("capture" if capturing["on"] else "eager"), pool=None)
    assert g is not None
    assert events == ["eager", "eager", "sync", "capture"]
