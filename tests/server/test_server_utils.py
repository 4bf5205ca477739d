"""The test harness itself: a server that lost its port to another process between :func:`free_port` and its own
bind is started again on another port, not reported as a failed test."""

from __future__ import annotations

import socket

import server_utils
from server_utils import MODEL, RemoteServer


def test_a_server_whose_port_was_taken_starts_again_on_another(tiny_model_dir, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    ports = iter([busy])
    real = server_utils.free_port
    monkeypatch.setattr(server_utils, "free_port", lambda: next(ports, None) or real())
    try:
        srv = RemoteServer(str(tiny_model_dir), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "64M"])
    finally:
        taken.close()
    try:
        assert srv.port != busy and srv._relaunches == 1
        r = srv.post("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200, r.text
    finally:
        srv.stop()
