"""PAGODA_REQUEST_TRACE lines and benchmarks/ttft_breakdown.py's join with a bench serve result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pagoda.engine.request_stats import ChildTimes, RequestTrace, finished_stats

ROOT = Path(__file__).resolve().parents[1]


def _breakdown_module():
    spec = importlib.util.spec_from_file_location("ttft_breakdown", ROOT / "benchmarks" / "ttft_breakdown.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_trace_is_off_unless_the_variable_is_set(monkeypatch):
    monkeypatch.delenv("PAGODA_REQUEST_TRACE", raising=False)
    assert RequestTrace.from_env() is None


def test_trace_lines_and_breakdown(tmp_path, monkeypatch):
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv("PAGODA_REQUEST_TRACE", str(path))
    trace = RequestTrace.from_env()
    assert trace is not None
    # Request A: sent at 100.000, registered 100.002, core 100.003, scheduled 100.010, first token 100.030,
    # client's first chunk at 100.032 (ttft 32 ms). Request B: never scheduled (aborted while queued).
    times = ChildTimes(queued_s=0.007, scheduled_at=100.010, first_token_at=100.030, last_token_at=100.1)
    trace.write("cmpl-a-0", "cmpl-a-0", 100.002, times, finished_stats(times, 100.1, 100.002, "length", 5, 4))
    trace.write("cmpl-b-0", "cmpl-b-0", 100.5, None, finished_stats(None, 100.6, 100.5, "abort", 5, 0))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["cmpl-a-0", "cmpl-b-0"]
    assert lines[0]["core_arrival"] == pytest.approx(100.003)
    assert lines[1]["scheduled"] is None and lines[1]["core_arrival"] is None

    result = {"sent_ats": [100.0, 100.4], "response_ids": ["cmpl-a", "cmpl-b"], "ttfts": [0.032, None]}
    seg = _breakdown_module().breakdown(result, lines, skip=0)
    assert len(seg["ttft"]) == 1  # B has no first token: left out
    got = {k: v[0] for k, v in seg.items()}
    expect = {"http_in": 2, "to_core": 1, "queue": 7, "prefill": 20, "out": 2, "sum": 32, "ttft": 32}
    assert got == pytest.approx(expect, abs=1e-6)
    assert _breakdown_module().breakdown(result, lines, skip=1)["ttft"] == []  # the first by send time skipped

    # The core's step() calls ended at .005, .012 (A scheduled in it), .027 (A's prompt step came back) and .040.
    steps = [{"wall_t1": 100.0 + x} for x in (0.040, 0.005, 0.027, 0.012)]  # any order
    seg = _breakdown_module().breakdown(result, lines, skip=0, steps=steps)
    got = {k: seg[k][0] for k in ("in_flight", "prompt_step", "to_front")}
    assert got == pytest.approx({"in_flight": 2, "prompt_step": 15, "to_front": 3}, abs=1e-6)
    assert sum(got.values()) == pytest.approx(seg["prefill"][0])
    # no call ended inside the prefill segment: no split for that request
    assert _breakdown_module().breakdown(result, lines, skip=0, steps=[{"wall_t1": 100.2}])["in_flight"] == []
