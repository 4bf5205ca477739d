"""/health means "can serve": 503 while loading, when the engine core is stuck, and when it is dead.

Each test gets its own server, because these tests stop or kill processes.
"""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
from server_utils import MODEL, RemoteServer, free_port, pid_alive, wait_for

LONG = {"model": MODEL, "prompt": "Continuous batching lets", "max_tokens": 1900, "temperature": 0,
        "ignore_eos": True, "stream": True}


@pytest.fixture
def own_server(tiny_model_dir):
    servers = []

    def start(*args: str, **kw) -> RemoteServer:
        srv = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                                 *args], **kw)
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.stop()


def test_health_is_503_while_loading_then_200(own_server):
    srv = own_server()
    assert 503 in srv.health_statuses, srv.health_statuses
    assert srv.health_statuses[-1] == 200
    first_503 = srv.health_statuses.index(503)
    assert all(s == 503 for s in srv.health_statuses[first_503:-1])


def test_stuck_core_fails_health_and_recovers(own_server):
    srv = own_server("--engine-stuck-timeout", "1")
    pid = srv.core_pid()
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", srv.url + "/v1/completions", json=LONG, headers=srv.headers) as resp:
            lines = resp.iter_lines()
            next(lines)
            os.kill(pid, signal.SIGSTOP)
            try:
                assert wait_for(lambda: httpx.get(srv.url + "/health").status_code == 503, timeout=10)
                err = httpx.get(srv.url + "/health").json()["error"]
                assert "no progress" in err["message"]
            finally:
                os.kill(pid, signal.SIGCONT)
            assert wait_for(lambda: httpx.get(srv.url + "/health").status_code == 200, timeout=10)
            # the request carries on to the end once the core runs again
            events = [ln for ln in lines if ln.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_dead_core_fails_stream_health_and_new_requests(own_server):
    srv = own_server("--engine-death-exit-delay", "-1")  # stays up answering 503, however slow the checks below
    pid = srv.core_pid()
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", srv.url + "/v1/completions", json=LONG, headers=srv.headers) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(pid, signal.SIGKILL)
            events = [ln for ln in lines if ln.startswith("data: ")]
    # the stream had started: the failure arrives as an error event, then [DONE]
    assert events[-1] == "data: [DONE]"
    err = json.loads(events[-2][6:])
    assert set(err) == {"error"} and "engine core" in err["error"]["message"]
    r = httpx.get(srv.url + "/health")
    assert r.status_code == 503 and "dead" in r.json()["error"]["message"]
    r = httpx.post(srv.url + "/v1/completions", json={**LONG, "stream": False, "max_tokens": 2}, timeout=10)
    assert r.status_code == 503
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert srv.proc.poll() is None  # the HTTP server itself stays up and answers


def test_core_exits_when_server_dies(own_server):
    srv = own_server()
    pid = srv.core_pid()
    assert pid_alive(pid)
    srv.proc.kill()
    srv.proc.wait()
    assert wait_for(lambda: not pid_alive(pid), timeout=15), "engine core outlived the API server"


def test_clean_shutdown_stops_core(own_server):
    srv = own_server()
    pid = srv.core_pid()
    srv.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, as a process should
    assert srv.proc.wait(timeout=20) in (0, -signal.SIGTERM)
    assert wait_for(lambda: not pid_alive(pid), timeout=10)


def test_bind_defaults_to_localhost():
    import argparse

    from pagoda.entrypoints.openai.cli_args import add_serve_args

    args = add_serve_args(argparse.ArgumentParser()).parse_args([])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.model_tag is None
    args = add_serve_args(argparse.ArgumentParser()).parse_args(["some/model", "--kv-cache-memory-bytes", "512M",
                                                                 "--served-model-name", "a", "b"])
    assert args.model_tag == "some/model" and args.kv_cache_memory_bytes == 512 * 2**20
    assert args.served_model_name == ["a", "b"]


def test_serve_help_lists_vllm_flags():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pagoda", "serve", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for flag in ["--host", "--port", "--served-model-name", "--max-model-len", "--dtype", "--max-num-seqs",
                 "--max-num-batched-tokens", "--block-size", "--kv-cache-memory-bytes", "--gpu-memory-utilization",
                 "--api-key", "--chat-template", "--generation-config", "--seed", "--load-format", "--enforce-eager",
                 "--max-logprobs", "--disable-log-requests", "--uvicorn-log-level"]:
        assert flag in out, flag


def test_an_engine_that_cannot_start_is_one_clear_error(tiny_model_dir):
    """A start-up error raised while the engine is built (here: a KV cache budget under two blocks) ends `pagoda
    serve` at once with the message naming the flag: no traceback, and no "exits in N s" line (that delay is for
    an engine that dies while serving)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pagoda", "serve", str(tiny_model_dir), "--port", str(free_port()),
                        "--kv-cache-memory-bytes", "1K"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 1
    assert "--kv-cache-memory-bytes" in r.stderr and "fewer than 2 blocks" in r.stderr
    assert "Traceback" not in r.stderr and "exits in" not in r.stderr
