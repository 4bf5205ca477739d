"""The rank monitor (pagoda/distributed/executor.py): a worker rank that dies while the engine core's thread is
blocked (under NCCL a collective waiting for a dead peer never fails) is reported by the monitor thread, which
kills the other ranks, removes their folder and hands the handler a message naming the rank; the engine-core
process's handler sends ``CoreFailed`` on sockets of its own and exits. On the CPU (gloo) the core's thread is
simply left idle here: no step runs, so only the monitor can notice."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from pagoda.distributed import executor as ex
from pagoda.engine.messages import CoreFailed


@contextlib.contextmanager
def _tp2(tiny, monkeypatch, handler, grace_s: float) -> Iterator[Any]:
    """A TP=2 LLM whose rank monitor calls ``handler`` after ``grace_s``; shut down (and the handler unset) after."""
    from pagoda import LLM

    monkeypatch.setattr(ex, "DEATH_GRACE_S", grace_s)
    monkeypatch.setattr(ex, "_death_handler", handler)
    llm = LLM(str(tiny.path("llama")), dtype="float32", tensor_parallel_size=2, device="cpu",
              max_num_batched_tokens=48, max_num_seqs=4)
    try:
        yield llm
    finally:
        monkeypatch.setattr(ex, "_death_handler", None)
        llm.llm_engine.shutdown()


def test_monitor_reports_a_rank_that_dies_while_the_core_is_blocked(tiny, monkeypatch):
    got: list[str] = []
    called = threading.Event()
    with _tp2(tiny, monkeypatch, lambda message: (got.append(message), called.set()), 0.5) as llm:
        executor = llm.llm_engine.core.runner.executor
        folder = Path(executor._dir)
        assert folder.exists()
        executor.procs[0].kill()
        assert called.wait(60), "the monitor did not report the dead rank"
        assert got[0].startswith("tensor-parallel rank 1 of 2 died (exit code -9); the engine cannot continue")
        assert "rank monitor" in got[0]
        assert not folder.exists()  # removed before the handler, which ends the process


def test_monitor_stays_silent_when_the_core_reported_the_death_itself(tiny, monkeypatch):
    got: list[str] = []
    with _tp2(tiny, monkeypatch, got.append, 0.5) as llm:
        executor = llm.llm_engine.core.runner.executor
        executor.procs[0].kill()
        executor.procs[0].wait()
        with pytest.raises(ex.WorkerDied, match="tensor-parallel rank 1 of 2 died"):
            executor.check_alive()  # the engine core's own thread finds it first (its heartbeat or next step)
        threading.Event().wait(1.5)  # three grace periods: the monitor would have spoken by now
        assert got == []


def test_monitor_ends_with_a_clean_stop(tiny, monkeypatch):
    """A shutdown stops the workers (they exit 0 on StopWorker): no report, and the monitor thread ends."""
    got: list[str] = []
    with _tp2(tiny, monkeypatch, got.append, 0.0):
        monitors = [t for t in threading.enumerate() if t.name == "pagoda-rank-monitor"]
        assert monitors
    for t in monitors:
        t.join(10)
        assert not t.is_alive()
    assert got == []


def _say_last_words(addr: str) -> None:
    import zmq as zmq_

    from pagoda.engine.core_proc import _last_words

    _last_words(zmq_.Context(), [addr], "tensor-parallel rank 1 of 2 died (exit code -9); the engine cannot continue.")


def test_last_words_reach_the_front_end_and_the_process_exits_1(tmp_path):
    """The engine-core process's handler: ``CoreFailed`` on a socket of its own, then exit code 1."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    addr = f"ipc://{tmp_path}/out"
    pull.bind(addr)
    try:
        proc = multiprocessing.get_context("spawn").Process(target=_say_last_words, args=(addr,))
        proc.start()
        assert pull.poll(60_000), "no message from the dying core"
        msg = msgspec.msgpack.decode(pull.recv(), type=CoreFailed)
        assert msg.message.startswith("tensor-parallel rank 1 of 2 died")
        proc.join(30)
        assert proc.exitcode == 1
    finally:
        pull.close(linger=0)
        ctx.term()
