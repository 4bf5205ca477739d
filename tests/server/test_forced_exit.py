"""A second Ctrl-C during the graceful shutdown (uvicorn's forced exit, which skips the lifespan's shutdown event)
still stops the engine core and removes its ipc folder before the server exits: asyncio's end cancels the lifespan's
task, and its ``finally`` shuts the engine down."""

from __future__ import annotations

import os
import signal

import httpx
from server_utils import MODEL, RemoteServer, pid_alive, wait_for


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=5)
    except httpx.TransportError:
        return True
    return False


def test_a_second_ctrl_c_still_stops_the_core_and_removes_its_ipc_folder(tiny_model_dir, tmp_path):
    srv = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M",
                                             "--shutdown-grace-period", "120"], env={"TMPDIR": str(tmp_path)})
    try:
        core = srv.core_pid()
        assert list(tmp_path.glob("pagoda-ipc-*"))
        body = {"model": MODEL, "prompt": "x", "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=120) as client, client.stream("POST", srv.url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(core, signal.SIGSTOP)  # the stream cannot end, so the graceful shutdown waits for it
            try:
                srv.proc.send_signal(signal.SIGINT)
                assert wait_for(lambda: _refused(srv.url), 60)  # the shutdown has begun: no new connections
                srv.proc.send_signal(signal.SIGINT)  # forced exit
            finally:
                os.kill(core, signal.SIGCONT)
            srv.proc.wait(60)
    finally:
        srv.stop()
    assert wait_for(lambda: not pid_alive(core), 30), "the engine core outlived the server"
    assert not list(tmp_path.glob("pagoda-ipc-*")), os.listdir(tmp_path)
