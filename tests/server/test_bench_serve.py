"""`pagoda bench serve` in smoke mode against the test server, so the benchmark cannot rot."""

from __future__ import annotations

import argparse
import json

import pytest
from server_utils import API_KEY

from pagoda.benchmarks.serve import add_bench_serve_args, run_bench_serve


def _args(server, tmp_path, *extra: str) -> argparse.Namespace:
    p = add_bench_serve_args(argparse.ArgumentParser())
    return p.parse_args(["--base-url", server.url, "--api-key", API_KEY, "--num-prompts", "6",
                         "--random-input-len", "12", "--random-output-len", "8", "--ignore-eos", "--seed", "3",
                         "--save-result", "--result-dir", str(tmp_path), "--result-filename", "r.json", *extra])


def test_bench_serve_completions_smoke(server, tmp_path, capsys):
    res = run_bench_serve(_args(server, tmp_path, "--max-concurrency", "3"))
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["completed"] == 6 and saved["failed"] == 0
    assert saved["total_output_tokens"] == 6 * 8  # from the usage chunk
    # counted with the server's /tokenize; the tiny test tokenizer splits words, so allow a shortfall
    assert saved["prompt_lengths_exact"] and all(9 <= n <= 12 for n in saved["input_lens"])
    for m in ("ttft", "tpot", "itl", "e2el"):
        for k in ("mean", "median", "p50", "p90", "p99"):
            assert saved[f"{k}_{m}_ms"] > 0  # a latency is never reported as zero
    assert saved["requests_without_tokens"] == 0 and all(t > 0 for t in saved["ttfts"])
    # per token: each request's gaps sum to its last-token time minus its TTFT
    for ttft, itl, e2el in zip(saved["ttfts"], saved["itls"], saved["e2els"], strict=True):
        assert abs(sum(itl) - (e2el - ttft)) < 1e-9
    assert saved["p99_e2el_ms"] >= saved["p50_e2el_ms"] > 0
    assert saved["output_throughput"] > 0 and res["model"] == saved["model"]
    out = capsys.readouterr().out
    assert "Output token throughput" in out and "P99 TTFT" in out


def test_bench_serve_reads_the_server_processes_cpu_time(server, tmp_path, capsys):
    """--server-pid: the API server's and its engine core's CPU seconds over the timed run, per output token."""
    res = run_bench_serve(_args(server, tmp_path, "--max-concurrency", "6", "--server-pid", str(server.proc.pid)))
    assert res["completed"] == 6 and res["engine_core_processes"] == 1  # found the spawned core
    api, core = res["api_server_cpu_s"], res["engine_core_cpu_s"]
    assert api >= 0 and core >= 0
    assert res["api_server_cpu_ms_per_output_token"] == pytest.approx(1000 * api / 48)
    assert res["engine_core_cpu_ms_per_output_token"] == pytest.approx(1000 * core / 48)
    assert res["api_server_cpu_ms_per_request"] == pytest.approx(1000 * api / 6)
    assert res["token_chunks"] <= 6 * 7 and res["burst_chunks"] <= res["token_chunks"]
    out = capsys.readouterr().out
    assert "Engine core CPU ms per output token:" in out and "ITL P99 / P50:" in out


def test_bench_serve_chat_with_rate(server, tmp_path):
    res = run_bench_serve(_args(server, tmp_path, "--endpoint", "/v1/chat/completions", "--request-rate", "50"))
    assert res["completed"] == 6 and res["total_output_tokens"] == 48


def test_bench_serve_prefix_repetition(server, tmp_path, capsys):
    # one request at a time after a reset: the 2 first-seen prefixes miss, the 4 repeats hit
    res = run_bench_serve(_args(server, tmp_path, "--dataset-name", "prefix_repetition", "--max-concurrency", "1",
                                "--prefix-repetition-prefix-len", "40", "--prefix-repetition-suffix-len", "8",
                                "--prefix-repetition-num-prefixes", "2", "--prefix-repetition-output-len", "4",
                                "--reset-prefix-cache"))
    assert res["completed"] == 6 and res["total_output_tokens"] == 6 * 4
    assert res["num_first_seen_prefix"] == 2 and res["num_repeated_prefix"] == 4
    assert res["prefix_cache_queries"] == sum(res["input_lens"])
    # each repeat shares its (up to) 40-token prefix: 2 full blocks of 16
    assert res["prefix_cache_hits"] == 4 * 32
    assert res["prefix_cache_hit_rate"] == res["prefix_cache_hits"] / res["prefix_cache_queries"]
    assert res["median_ttft_first_seen_prefix_ms"] > 0 and res["median_ttft_repeated_prefix_ms"] > 0
    assert res["prefix_repetition"] == {"prefix_len": 40, "suffix_len": 8, "num_prefixes": 2, "output_len": 4}
    out = capsys.readouterr().out
    assert "Prefix cache hit rate (%):" in out and "Median TTFT, repeated prefix (ms):" in out
    # a rerun of the same command starts cold again thanks to --reset-prefix-cache
    again = run_bench_serve(_args(server, tmp_path, "--dataset-name", "prefix_repetition", "--max-concurrency", "1",
                                  "--prefix-repetition-prefix-len", "40", "--prefix-repetition-suffix-len", "8",
                                  "--prefix-repetition-num-prefixes", "2", "--prefix-repetition-output-len", "4",
                                  "--reset-prefix-cache"))
    assert again["prefix_cache_hits"] == res["prefix_cache_hits"]


def test_bench_serve_over_two_client_processes(server, tmp_path):
    """--num-client-processes 2: the requests are split over two load-generator processes (concurrency 2 + 1);
    every request completes and the per-request figures come back in prompt order (the same prompts, the same
    lengths as a one-process run)."""
    one = run_bench_serve(_args(server, tmp_path, "--max-concurrency", "3"))
    two = run_bench_serve(_args(server, tmp_path, "--max-concurrency", "3", "--num-client-processes", "2"))
    assert two["completed"] == 6 and two["failed"] == 0 and two["total_output_tokens"] == 6 * 8
    assert two["num_client_processes"] == 2 and two["client_cpu_share"] > 0
    assert two["input_lens"] == one["input_lens"] and two["output_lens"] == one["output_lens"]
    assert all(t > 0 for t in two["ttfts"]) and two["duration_s"] > 0
    for ttft, itl, e2el in zip(two["ttfts"], two["itls"], two["e2els"], strict=True):
        assert abs(sum(itl) - (e2el - ttft)) < 1e-9


@pytest.mark.parametrize("extra", [["--num-client-processes", "7"], ["--max-concurrency", "3",
                                                                     "--num-client-processes", "4"],
                                   ["--num-client-processes", "0"]])
def test_bench_serve_client_processes_bounds(server, tmp_path, extra):
    with pytest.raises(ValueError, match="--num-client-processes must be in"):
        run_bench_serve(_args(server, tmp_path, *extra))


def test_bench_serve_without_a_server_is_a_one_line_error(capsys):
    from server_utils import free_port

    from pagoda.entrypoints.cli import main

    port = free_port()  # nothing listens there
    for extra in ([], ["--model", "m"]):  # with --model too: the same check, not a failed test request
        with pytest.raises(SystemExit) as e:
            main(["bench", "serve", "--port", str(port), "--num-prompts", "2", *extra])
        msg = str(e.value.code)
        assert msg.startswith(f"error: cannot reach http://127.0.0.1:{port} (ConnectError") and "\n" not in msg, msg
        assert "--base-url or --host/--port" in msg


def test_bench_serve_length_flags(capsys):
    p = add_bench_serve_args(argparse.ArgumentParser(prog="pagoda bench serve"))
    for argv, message in ((["--random-range-ratio", "1"], "argument --random-range-ratio: must be in [0, 1), got 1"),
                          (["--random-range-ratio", "-0.5"], "must be in [0, 1), got -0.5"),
                          (["--random-output-len", "0"], "argument --random-output-len: must be at least 1, got 0")):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
        assert message in capsys.readouterr().err
    assert p.parse_args(["--random-range-ratio", "0.5"]).random_range_ratio == 0.5


def test_split_concurrency():
    from pagoda.benchmarks.client_pool import split_concurrency

    assert split_concurrency(256, 4) == [64] * 4 and split_concurrency(7, 3) == [3, 2, 2]
    assert split_concurrency(None, 2) == [None, None]


def test_api_stream_cost_smoke(tmp_path):
    """benchmarks/api_stream_cost.py (the API server's CPU per streamed token, against a stub engine core) runs end
    to end at a tiny size, so its stub cannot drift from the front end's core interface unnoticed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from server_utils import free_port

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "benchmarks" / "api_stream_cost.py"), "--num-prompts", "4", "--max-concurrency",
           "2", "--input-len", "8", "--output-len", "4", "--warmup", "1", "--step-ms", "5", "--port", str(free_port())]
    out = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "API server CPU ms per output token" in out.stdout and "failed" not in out.stdout.lower(), out.stdout
