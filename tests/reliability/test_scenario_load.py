"""Scenario 1 (load): 64 concurrent streaming clients with mixed lengths, for 3 min (CI: 15 s).

The CI run is the same check, shorter: all 64 clients, the same request mix and the same assertions (every
request ok, at least one per client, the server recovered); ``PAGODA_RELIABILITY_FULL=1`` runs the 3 minutes."""

from __future__ import annotations

import asyncio
import random
import time

from harness import MODEL, Ledger, assert_recovered, async_client, record, scale, stream_request, take_baseline

CLIENTS = 64
DURATION_S = scale(15, 180)
WORDS = "paged attention keeps the key value cache in fixed size blocks so many requests share memory".split()


def random_body(rng: random.Random) -> tuple[str, dict]:
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 4, 16, 64, 200])))
    max_tokens = rng.choice([1, 8, 32, 128, 256])
    common = {"model": MODEL, "max_tokens": max_tokens, "temperature": rng.choice([0, 0.7]), "ignore_eos": True}
    if rng.random() < 0.5:
        return "/v1/completions", {**common, "prompt": prompt}
    return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": prompt}]}


def test_load(make_server):
    srv = make_server()
    base = take_baseline(srv)
    ledger = Ledger()

    async def client(i: int, deadline: float) -> None:
        rng = random.Random(i)
        async with async_client(limit=4) as c:
            while time.monotonic() < deadline:
                path, body = random_body(rng)
                await stream_request(c, srv, path, body, ledger, timeout=60)

    async def main() -> None:
        deadline = time.monotonic() + DURATION_S
        await asyncio.gather(*[client(i, deadline) for i in range(CLIENTS)])

    t0 = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - t0
    assert ledger.outcomes.count("ok") >= CLIENTS, ledger.by_outcome()
    assert set(ledger.by_outcome()) == {"ok"}, ledger.by_outcome()  # every request here is valid
    figures = assert_recovered(srv, base, ledger)
    record("load", ledger, clients=CLIENTS, duration_s=round(elapsed, 1), **figures)
