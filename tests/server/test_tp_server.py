"""`pagoda serve -tp 2` (gloo on the CPU): it serves, and a worker rank that dies, even while the engine is idle, takes
the engine core down through the engine-death path (503 naming the rank on /health and on new requests; the HTTP
server keeps answering)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
from server_utils import MODEL, RemoteServer, pid_alive, wait_for


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


def test_a_terminated_core_stops_its_workers_and_removes_their_folder(tiny_model_dir, tmp_path):
    """SIGTERM to the engine core (the front end's stop of a core still starting, the parent-death signal): the
    core stops its worker ranks itself and removes their rendezvous folder, rather than leaving the workers to
    notice its death and the folder to the temp dir."""
    srv = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                             "--tensor-parallel-size", "2", "--engine-death-exit-delay", "-1"],
                       env={"TMPDIR": str(tmp_path)})
    try:
        core = srv.core_pid()
        (worker,) = _children(core)
        assert list(tmp_path.glob("pagoda-tp-*"))
        os.kill(core, signal.SIGTERM)
        assert wait_for(lambda: not pid_alive(core) and not pid_alive(worker), 60)
        assert not list(tmp_path.glob("pagoda-tp-*")), os.listdir(tmp_path)
    finally:
        srv.stop()
