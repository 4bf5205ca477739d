"""`pagoda serve -tp 2` (gloo on the CPU): it serves, and a worker rank that dies, even while the engine is idle, takes
the engine core down through the engine-death path (503 naming the rank on /health and on new requests; the HTTP
server keeps answering)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
from server_utils import MODEL, RemoteServer, wait_for


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_tp2_server_serves_and_reports_a_dead_rank(tiny_model_dir):
    srv = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                             "--tensor-parallel-size", "2", "--engine-death-exit-delay", "-1"])
    try:
        body = {"model": MODEL, "prompt": "Paris is", "max_tokens": 4, "temperature": 0}
        r = httpx.post(srv.url + "/v1/completions", json=body, headers=srv.headers, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        (worker,) = _children(srv.core_pid())
        os.kill(worker, signal.SIGKILL)
        # idle: the core's heartbeat finds the dead rank; /health says so before any request comes
        assert wait_for(lambda: httpx.get(srv.url + "/health").status_code == 503, timeout=10)
        assert "dead" in httpx.get(srv.url + "/health").json()["error"]["message"]
        r = httpx.post(srv.url + "/v1/completions", json=body, headers=srv.headers, timeout=60)
        assert r.status_code == 503
        assert "tensor-parallel rank 1 of 2 died" in r.json()["error"]["message"], r.text
    finally:
        srv.stop()
