"""`pagoda serve --data-parallel-size 2`: the server's processes while it serves and after it stops.

The core prelaunched while the front end imports is told to exit (each replica needs its own environment); it
must be reaped, not left ``<defunct>`` for the server's lifetime. A stop leaves no process of the server behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
from server_utils import RemoteServer, wait_for  # noqa: E402


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _zombies(procs: list[psutil.Process]) -> list[int]:
    out = []
    for p in procs:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def test_dp2_server_reaps_the_discarded_prelaunched_core_and_stops_every_process(tiny):
    srv = RemoteServer(str(tiny.path("llama")), ["--served-model-name", "tiny", "--dtype", "float32",
                                                  "--kv-cache-memory-bytes", "16M", "--data-parallel-size", "2"])
    try:
        r = srv.post("/v1/completions", {"model": "tiny", "prompt": ["Paris is", "hello"], "max_tokens": 3})
        assert r.status_code == 200, r.text
        procs = _tree(srv.proc.pid)
        assert sum(p.name() == "pagoda-core" for p in procs if p.pid not in _zombies(procs)) == 2  # the replicas
        assert not _zombies(procs), [(p.pid, p.name()) for p in procs]
    finally:
        srv.stop()
    assert srv.proc.returncode == 0
    assert wait_for(lambda: not [p for p in procs if p.is_running() and p.pid not in _zombies([p])], timeout=15)
