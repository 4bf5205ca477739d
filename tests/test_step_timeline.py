"""The step timeline (pagoda/engine/step_timeline.py), the makespan bound of `pagoda bench throughput` and
benchmarks/step_timeline_report.py, on a tiny dummy model: the accounting must add up exactly (tokens
per step against the workload, time per bucket against the time inside step()); no timing is asserted."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_bench_smoke import _model, load_script

from pagoda.benchmarks.datasets import load_requests
from pagoda.engine.step_timeline import read_timeline, step_token_counts
from pagoda.entrypoints.cli import main


def _throughput(tmp_path: Path, *extra: str) -> tuple[dict, list[dict], list]:
    m = str(_model(tmp_path))
    out, tl, saved = tmp_path / "tp.json", tmp_path / "tl.jsonl", tmp_path / "reqs.json"
    main(["--log-level", "WARNING", "bench", "throughput", "--model", m, "--load-format", "dummy",
          "--num-prompts", "10", "--input-len", "16", "--output-len", "8", "--range-ratio", "0.5",
          "--max-num-seqs", "4", "--max-model-len", "256",
          "--makespan-bound", "--makespan-decode-steps", "4", "--step-timeline", str(tl),
          "--save-requests", str(saved), "--output-json", str(out), *extra])
    return json.loads(out.read_text())["results"][0], read_timeline(str(tl)), load_requests(saved)


@pytest.mark.parametrize("scheduling", ["--no-async-scheduling", "--async-scheduling"])
def test_timeline_accounts_for_every_token_of_the_timed_run(tmp_path, capsys, scheduling):
    res, recs, reqs = _throughput(tmp_path, scheduling)
    assert res["prefix_cache_hit_rate"] == 0.0  # random prompts: every prompt token is computed
    # only the timed run is recorded (no warm-up, no makespan calibration): its tokens, exactly
    assert {r["run"] for r in recs} == {"pagoda"} and [r["step"] for r in recs] == list(range(len(recs)))
    assert sum(r["prefill_tokens"] for r in recs) == sum(len(q.prompt_token_ids) for q in reqs)
    assert sum(r["decode_tokens"] for r in recs) == sum(q.output_len - 1 for q in reqs)  # 1st token: prefill
    assert sum(r["out_tokens"] for r in recs) == res["output_tokens"] == sum(q.output_len for q in reqs)
    assert all(1 <= r["num_reqs"] <= 4 and r["path"] == "eager" for r in recs if r["num_reqs"])
    assert all(r["t0"] <= r["t1"] and 0 <= r["wait_s"] <= r["t1"] - r["t0"] for r in recs)
    assert all(a["t1"] <= b["t0"] for a, b in zip(recs, recs[1:], strict=False))
    offsets = [r["wall_t1"] - r["t1"] for r in recs]  # one wall-clock offset for the whole file
    assert max(offsets) - min(offsets) < 1e-5 and abs(offsets[0] - (time.time() - time.perf_counter())) < 60
    assert max(r["num_running"] for r in recs) == 4 and recs[-1]["num_running"] == 0
    if scheduling == "--async-scheduling":  # the last call launches nothing and returns the last step's tokens
        assert recs[-1]["num_reqs"] == 0 and recs[-1]["path"] is None and recs[-1]["out_tokens"] > 0
    else:  # synchronous: each call returns the tokens of the step it launched
        assert all(r["num_reqs"] and r["out_tokens"] <= r["num_reqs"] for r in recs)

    rep = load_script("benchmarks/step_timeline_report.py")
    s = rep.summarize(recs)
    for table in ("by_batch", "by_kind", "by_path"):
        assert sum(g["steps"] for g in s[table].values()) == len(recs)
        assert sum(g["seconds"] for g in s[table].values()) == pytest.approx(s["in_step_s"])
    assert set(s["by_batch"]) <= {"1", "2-4", "none"}
    assert s["by_kind"]["prefill"]["prefill_tokens"] == sum(r["prefill_tokens"] for r in recs)
    assert s["span_s"] == pytest.approx(s["in_step_s"] + s["between_steps_s"])
    tail = s["tail"]
    start = next(r for r in recs if r["step"] == tail["start_step"])
    assert tail["peak_running"] == 4 and start["num_running"] < 0.25 * 4 and 0 < tail["share"] <= 1
    assert tail["steps"] == len(recs) - recs.index(start)

    rep.main([str(tmp_path / "tl.jsonl")])
    out = capsys.readouterr().out
    assert "== run pagoda" in out and "tail (running < 25% of peak 4" in out and "host wait" in out


def test_makespan_bound_is_the_larger_of_tail_and_work(tmp_path, capsys):
    res, _, reqs = _throughput(tmp_path)
    b = res["makespan_bound"]
    longest = max(q.output_len for q in reqs)
    assert b["longest_output_tokens"] == longest and b["output_tokens"] == sum(q.output_len for q in reqs)
    assert b["tail_s"] == pytest.approx(longest * b["batch1_step_ms"] / 1000)
    assert b["full_batch"] == 4 and b["decode_tokens_per_s"] == pytest.approx(4 / (b["full_batch_step_ms"] / 1000))
    assert b["work_s"] == pytest.approx(b["prompt_tokens"] / b["prefill_tokens_per_s"]
                                        + b["output_tokens"] / b["decode_tokens_per_s"])
    assert b["seconds"] == max(b["tail_s"], b["work_s"]) and b["measured_s"] == pytest.approx(res["seconds"], abs=1e-3)
    assert b["ratio"] == pytest.approx(b["measured_s"] / b["seconds"]) and "definition" in b
    assert "[makespan] bound" in capsys.readouterr().out


def test_timeline_is_off_by_default_and_latency_records_each_batch(tmp_path):
    from pagoda.config import EngineArgs
    from pagoda.engine.core import EngineCore

    m = str(_model(tmp_path))
    core = EngineCore(EngineArgs(model=m, load_format="dummy", max_model_len=256).create_config())
    assert core.step_timeline is None
    core.shutdown()
    tl = tmp_path / "lat.jsonl"
    main(["--log-level", "WARNING", "bench", "latency", "--model", m, "--load-format", "dummy", "--batch-size", "1",
          "3", "--input-len", "20", "--output-len", "5", "--num-iters", "2", "--max-model-len", "256",
          "--no-enable-prefix-caching", "--step-timeline", str(tl)])  # the runs reuse their seeds' prompts
    recs = read_timeline(str(tl))
    for run, bs in (("batch1", 1), ("batch3", 3)):
        mine = [r for r in recs if r["run"] == run]
        assert sum(r["prefill_tokens"] for r in mine) == 2 * bs * 20  # 2 timed iterations, no warm-up
        assert sum(r["out_tokens"] for r in mine) == 2 * bs * 5 and max(r["num_reqs"] for r in mine) == bs


def _sched(*entries: tuple[int, int, int, int]) -> SimpleNamespace:
    """(prompt length, start, new tokens, speculative proposals) per scheduled request."""
    return SimpleNamespace(scheduled=[
        SimpleNamespace(request=SimpleNamespace(num_prompt_tokens=p), start=s, num_new_tokens=n,
                        spec_token_ids=[0] * k) for p, s, n, k in entries])


def test_step_token_counts_rule():
    assert step_token_counts(_sched((10, 0, 8, 0))) == (8, 0)  # a prompt chunk
    assert step_token_counts(_sched((10, 8, 2, 0))) == (2, 0)  # the last chunk (it samples): still prefill
    assert step_token_counts(_sched((10, 10, 1, 0), (10, 12, 4, 3))) == (0, 5)  # a decode and a verify of 3
    assert step_token_counts(_sched((10, 10, 6, 0))) == (6, 0)  # recomputing outputs after a preemption


def test_tail_starts_after_the_peak():
    rep = load_script("benchmarks/step_timeline_report.py")
    recs = [{"num_running": n} for n in (1, 8, 8, 5, 1, 4, 0)]
    assert rep.tail_start(recs) == 4  # the first below 25 % of 8 after the peak, not the ramp-up at 1
    assert rep.tail_start([{"num_running": n} for n in (1, 4, 3)]) is None
    assert [rep.bucket(n) for n in (0, 1, 2, 4, 5, 16, 17, 64, 65, 256, 257)] == [
        "none", "1", "2-4", "2-4", "5-16", "5-16", "17-64", "17-64", "65-256", "65-256", ">256"]


def test_env_var_attaches_an_appending_timeline_to_a_server_core(tmp_path, monkeypatch):
    from pagoda.engine import core_proc

    core = SimpleNamespace(step_timeline=None)
    monkeypatch.delenv("PAGODA_STEP_TIMELINE", raising=False)
    core_proc._attach_step_timeline(core)
    assert core.step_timeline is None
    path = tmp_path / "core.jsonl"
    path.write_text('{"step": 0, "run": "earlier"}\n')
    monkeypatch.setenv("PAGODA_STEP_TIMELINE", str(path))
    core_proc._attach_step_timeline(core)
    assert core.step_timeline is not None and core.step_timeline.run.startswith("core-")
    core.step_timeline.close()
    assert read_timeline(str(path)) == [{"step": 0, "run": "earlier"}]  # appended to, not truncated
