"""The front end takes a core as started only once the core's input connection is up.

The core *connects* its sockets and ZMQ retries a refused connect every 100-200 ms. A prelaunched core connects
before the front end binds, so its ``Ready`` (queued on its output side) can arrive while its input connect still
waits for the next retry; a non-blocking send then fails with ``zmq.Again`` and the front end took the core for
dead (CI: the first request of a freshly started server answered 503 ``engine_dead``). Here a fake core sends
``Ready`` first and connects its input 0.3 s later, which makes that race certain.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import zmq

from pagoda.config import EngineArgs
from pagoda.engine import core_engines
from pagoda.engine.core_engines import CoreEngine, CoreEngines
from pagoda.engine.core_proc import ipc_addresses
from pagoda.engine.messages import AdmissionLimits, Ready, encoder


class _Alive:
    exitcode = None

    def is_alive(self) -> bool:
        return True

    def terminate(self) -> None:
        pass


def _front_end(tmp_path: Any) -> tuple[CoreEngines, str, str]:
    import zmq.asyncio

    cores = CoreEngines(EngineArgs(model="unused"), cfg=None, log_level=0)  # type: ignore[arg-type]
    cores._zctx = zmq.Context()
    cores._azctx = zmq.asyncio.Context()
    in_addr, out_addr = ipc_addresses(str(tmp_path), 0)
    return cores, in_addr, out_addr


def _fake_core(in_addr: str, out_addr: str, connect_input_after_s: float | None) -> tuple[zmq.Context, Any]:
    """Sends ``Ready`` at once (queued until the front end binds); connects its input later, or never (None)."""
    ctx = zmq.Context()
    out = ctx.socket(zmq.PUSH)
    out.setsockopt(zmq.LINGER, 0)
    out.connect(out_addr)
    out.send(encoder().encode(Ready(1, 8, 16, AdmissionLimits(64, 400, 20, 128, 64, True), 0.0)))
    inp = ctx.socket(zmq.PULL)
    inp.setsockopt(zmq.LINGER, 0)
    if connect_input_after_s is not None:
        threading.Timer(connect_input_after_s, inp.connect, (in_addr,)).start()
    return ctx, (inp, out)


def _bind(cores: CoreEngines, in_addr: str, out_addr: str) -> CoreEngine:
    in_sock, out_sock = cores._bind(in_addr, out_addr)
    e = CoreEngine(0, _Alive(), in_sock, out_sock)
    cores.engines.append(e)
    return e


def test_ready_waits_for_the_cores_input_connection(tmp_path):
    cores, in_addr, out_addr = _front_end(tmp_path)
    ctx, (inp, out) = _fake_core(in_addr, out_addr, connect_input_after_s=0.3)
    try:
        e = _bind(cores, in_addr, out_addr)
        (ready,) = asyncio.run(cores.wait_ready())
        assert ready.num_blocks == 8
        e.in_sock.send(b"first request", flags=zmq.NOBLOCK)  # zmq.Again here without the wait
        assert inp.poll(5000) and inp.recv() == b"first request"
    finally:
        inp.close(0)
        out.close(0)
        ctx.term()
        cores.release()


def test_a_core_that_never_connects_its_input_fails_the_start_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(core_engines, "_INPUT_CONNECT_TIMEOUT_S", 0.3)
    cores, in_addr, out_addr = _front_end(tmp_path)
    ctx, (inp, out) = _fake_core(in_addr, out_addr, connect_input_after_s=None)
    try:
        _bind(cores, in_addr, out_addr)
        with pytest.raises(RuntimeError, match="engine core was ready but did not connect to the front end's input"):
            asyncio.run(cores.wait_ready())
    finally:
        inp.close(0)
        out.close(0)
        ctx.term()
        cores.release()


def test_a_failed_bind_leaves_no_socket_open(tmp_path):
    """An input address that cannot be bound (here: its folder is gone) fails the bind, and ``release()`` still
    returns: a socket the failed bind left open would block its ``ctx.term()`` forever (a frozen server)."""
    cores, _, out_addr = _front_end(tmp_path)
    with pytest.raises(zmq.ZMQError) as failed:  # its traceback keeps _bind's frame, as the server's error does
        cores._bind(f"ipc://{tmp_path}/gone/input_0", out_addr)
    t = threading.Thread(target=cores.release, daemon=True)
    t.start()
    t.join(60)  # bounds a hang only
    assert not t.is_alive(), "release() blocked in ctx.term(): the failed bind left a socket open"
    assert failed.traceback


class _Starting:
    """A core process still building its engine: it reads no message before Ready; SIGTERM stops it."""

    exitcode = None

    def __init__(self) -> None:
        self.terminated = 0

    def is_alive(self) -> bool:
        return not self.terminated

    def terminate(self) -> None:
        self.terminated += 1

    def kill(self) -> None:
        raise AssertionError("a starting core stops on SIGTERM")

    def join(self, timeout: float | None = None) -> None:
        pass


def test_stop_terminates_a_core_still_starting_at_once(tmp_path, caplog):
    """A core stopped before its Ready cannot read ``Shutdown`` (its loop has not begun): it is sent SIGTERM at
    once, with no 5 s wait and no "did not stop within 5 s of Shutdown" warning."""
    cores, in_addr, out_addr = _front_end(tmp_path)
    e = _bind(cores, in_addr, out_addr)
    e.proc = _Starting()
    asyncio.run(cores.stop())
    assert e.proc.terminated == 1
    assert "did not stop" not in caplog.text
