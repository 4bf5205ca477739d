"""Scenario 6 (faults): the engine core process killed under load, and SIGTERM under load.

Documented behaviour (docs/serving.md, "Failures and shutdown"):
* core killed: in-flight requests fail at once with a 503 (an error event then ``[DONE]`` on a
  stream that had started), /health turns 503, and after ``--engine-death-exit-delay`` s the
  server exits with status 1 for its supervisor to restart it;
* SIGTERM: the server stops accepting connections, lets in-flight requests finish within
  ``--shutdown-grace-period`` s, stops the core and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
from harness import MODEL, Ledger, async_client, mixed_bodies, plain_request, record, scale, stream_request, wait_for
from server_utils import pid_alive

IN_FLIGHT = scale(16, 32)


def _bodies(max_tokens: int) -> list[tuple[str, dict, bool]]:
    return mixed_bodies(IN_FLIGHT, max_tokens, "fault {i}", "f {i}")


async def _run_with_event(srv, plan, ledger: Ledger, action, after_s: float) -> float:
    """Send every request, run ``action`` once they are all in flight; returns the action's time."""
    async with async_client() as c:
        jobs = [asyncio.ensure_future((stream_request if s else plain_request)(c, srv, p, b, ledger, timeout=60))
                for p, b, s in plan]
        deadline = time.monotonic() + 30
        while srv.metric("pagoda:num_requests_running") < len(plan) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(after_s)
        t = time.monotonic()
        action()
        await asyncio.gather(*jobs)
    return t


def test_engine_core_killed(make_server):
    srv = make_server("--engine-death-exit-delay", "8")  # the window the checks below run in, with room to spare
    pid = srv.core_pid()
    ledger = Ledger()
    t_kill = asyncio.run(_run_with_event(srv, _bodies(1900), ledger, lambda: os.kill(pid, signal.SIGKILL), 0.3))
    failed_within = time.monotonic() - t_kill
    ledger.assert_nothing_lost()
    # Every in-flight request failed with a 503 while the server was still up (it exits 8 s after the core's death,
    # after which a request would see a closed connection instead): no speed limit is needed to show they did not hang.
    assert ledger.by_outcome() == {"error 503": IN_FLIGHT}, ledger.by_outcome()
    statuses = []
    assert wait_for(lambda: statuses.append(httpx.get(srv.url + "/health", timeout=2).status_code) or
                    statuses[-1] == 503, timeout=5)
    r = srv.post("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2}, timeout=5)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
    # then the server exits (status 1) for its supervisor to restart it
    t0 = time.monotonic()
    rc = srv.proc.wait(timeout=60)
    assert rc == 1, rc
    record("fault_core_killed", ledger, failed_within_s=round(failed_within, 2), health_after=503,
           server_exit_code=rc, server_exit_after_s=round(time.monotonic() - t0 + failed_within, 1))


def test_sigterm_drains_in_flight_requests(make_server):
    srv = make_server("--shutdown-grace-period", "30")
    pid = srv.core_pid()
    ledger = Ledger()
    t_term = asyncio.run(_run_with_event(srv, _bodies(300), ledger,
                                         lambda: srv.proc.send_signal(signal.SIGTERM), 0.2))
    drained_s = time.monotonic() - t_term
    assert ledger.by_outcome() == {"ok": IN_FLIGHT}, ledger.by_outcome()  # every request finished in full
    rc = srv.proc.wait(timeout=30)
    exit_s = time.monotonic() - t_term
    assert rc == 0, f"exit status {rc} after SIGTERM:\n{srv.log()}"
    assert wait_for(lambda: not pid_alive(pid), timeout=10), "the engine core outlived the server"
    record("fault_sigterm", ledger, drained_s=round(drained_s, 2), exit_after_s=round(exit_s, 2), exit_code=rc)
