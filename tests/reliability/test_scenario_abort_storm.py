"""Scenario 2 (abort storm): requests abandoned at random points, streaming and not; the
engine frees their KV blocks within 2 s."""

from __future__ import annotations

import asyncio
import random
import time

from harness import (
    HANG_GUARD_S,
    MODEL,
    Ledger,
    assert_recovered,
    async_client,
    engine_idle,
    plain_request,
    record,
    scale,
    stream_request,
    take_baseline,
    wait_for,
)

REQUESTS = scale(150, 500)
CONCURRENCY = 48


def test_abort_storm(make_server):
    srv = make_server()
    base = take_baseline(srv)
    ledger = Ledger()
    rng = random.Random(1234)
    plan = []
    for i in range(REQUESTS):
        body = {"model": MODEL, "max_tokens": rng.choice([64, 256, 1024]), "temperature": 0.8, "ignore_eos": True,
                "n": rng.choice([1, 1, 1, 2])}
        if rng.random() < 0.5:
            body["prompt"] = f"abort storm request {i} " * rng.choice([1, 8, 40])
            path = "/v1/completions"
        else:
            body["messages"] = [{"role": "user", "content": f"abort storm {i} " * rng.choice([1, 8, 40])}]
            path = "/v1/chat/completions"
        streaming = rng.random() < 0.5
        # where to abandon: after k stream events, or after t seconds without an answer
        plan.append((path, body, streaming, rng.choice([1, 2, 5, 20, 60]), rng.choice([0.0, 0.01, 0.05, 0.2, 0.5])))

    async def main() -> None:
        sem = asyncio.Semaphore(CONCURRENCY)
        async with async_client(limit=CONCURRENCY * 2) as c:
            async def one(path, body, streaming, k, t):
                async with sem:
                    if streaming:
                        await stream_request(c, srv, path, body, ledger, abandon_after=k, timeout=60)
                    else:
                        await plain_request(c, srv, path, body, ledger, abandon_after_s=t)

            await asyncio.gather(*[one(*p) for p in plan])

    asyncio.run(main())
    t0 = time.monotonic()
    # Every abort frees its blocks: the engine goes idle. The wait is a hang guard, not a speed limit (the
    # time it took is recorded as a figure).
    freed = wait_for(lambda: engine_idle(srv) == (0, 0, 0), timeout=HANG_GUARD_S, interval=0.02)
    freed_s = time.monotonic() - t0
    assert freed, f"blocks not freed after the storm: running, waiting, kv usage = {engine_idle(srv)}"
    outcomes = ledger.by_outcome()
    assert outcomes.get("abandoned", 0) >= REQUESTS // 2, outcomes
    aborted = srv.metric("pagoda:request_success_total", finished_reason="abort")
    assert aborted >= outcomes.get("abandoned", 0) // 2, (aborted, outcomes)  # aborts reached the engine
    figures = assert_recovered(srv, base, ledger)
    record("abort_storm", ledger, blocks_freed_s=round(freed_s, 2), engine_aborts=aborted, **figures)
