"""The engine core's send of a step to a worker that reads nothing (paused, starved) fails after
``PAGODA_DIST_TIMEOUT_S`` naming the rank and the variable, instead of blocking for ever: a frame larger than the
socket's buffer (a step's block tables at long contexts) never reaches the collectives, whose own timeout would
otherwise catch the stuck rank."""

from __future__ import annotations

import socket
from multiprocessing.connection import Connection

import pytest

from pagoda.distributed.executor import MultiprocExecutor, WorkerDied, bound_sends

BIG = b"x" * (8 << 20)  # far more than a socket pair's buffer


def _undrained(seconds: float) -> tuple[Connection, socket.socket]:
    ours, theirs = socket.socketpair()
    bound_sends(ours, seconds)
    return Connection(ours.detach()), theirs  # theirs is kept open and never read


def test_a_send_nobody_drains_raises_after_the_limit():
    conn, theirs = _undrained(0.3)
    try:
        with pytest.raises(BlockingIOError):
            conn.send_bytes(BIG)
    finally:
        conn.close()
        theirs.close()


def test_the_executor_names_the_rank_and_the_variable(monkeypatch):
    monkeypatch.setenv("PAGODA_DIST_TIMEOUT_S", "0.3")
    conn, theirs = _undrained(0.3)
    ex = object.__new__(MultiprocExecutor)  # only what _send reads: one worker rank and its connection
    ex.worker_ranks, ex.conns, ex.world_size, ex.pp_size, ex.tp_size = [1], [conn], 2, 1, 2
    try:
        with pytest.raises(WorkerDied, match=r"tensor-parallel rank 1 of 2 did not read its step within "
                                             r"PAGODA_DIST_TIMEOUT_S=0.3 s"):
            ex._send(BIG)
    finally:
        conn.close()
        theirs.close()
