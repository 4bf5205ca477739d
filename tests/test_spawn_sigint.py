"""A process pagoda spawns takes a terminal's Ctrl-C only once its own SIGINT policy is set
(pagoda/engine/spawn_sigint.py): spawned with SIGINT blocked, it unblocks it after installing its handler."""

from __future__ import annotations

import multiprocessing
import os
import signal

from pagoda.engine.spawn_sigint import set_sigint_policy, sigint_blocked


def _child(conn) -> None:
    blocked_at_start = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C during start-up: pending, not raised
    set_sigint_policy(signal.SIG_IGN)  # it meets the policy: ignored
    conn.send((blocked_at_start, signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())))


def test_a_spawned_child_starts_with_sigint_blocked_and_takes_it_under_its_policy():
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    with sigint_blocked():
        p = ctx.Process(target=_child, args=(send,))
        p.start()
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before  # the parent's mask is back
    assert recv.poll(120)
    assert recv.recv() == (True, False)
    p.join(60)
    assert p.exitcode == 0  # the pending Ctrl-C was ignored, not raised
