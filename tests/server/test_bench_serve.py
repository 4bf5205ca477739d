"""`pagoda bench serve` in smoke mode against the test server, so the benchmark cannot rot."""

from __future__ import annotations

import argparse
import json

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
            assert saved[f"{k}_{m}_ms"] >= 0
    assert saved["p99_e2el_ms"] >= saved["p50_e2el_ms"] > 0
    assert saved["output_throughput"] > 0 and res["model"] == saved["model"]
    out = capsys.readouterr().out
    assert "Output token throughput" in out and "P99 TTFT" in out


def test_bench_serve_chat_with_rate(server, tmp_path):
    res = run_bench_serve(_args(server, tmp_path, "--endpoint", "/v1/chat/completions", "--request-rate", "50"))
    assert res["completed"] == 6 and res["total_output_tokens"] == 48
