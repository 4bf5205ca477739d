"""Scenario 3 (KV exhaustion): offered load far beyond the KV cache. Preemption happens, every
request completes, greedy outputs equal an unpressured run's, and a request that can never
fit is refused with a 400 at admission."""

from __future__ import annotations

import asyncio

import httpx
from harness import (
    MODEL,
    Ledger,
    assert_recovered,
    async_client,
    mixed_bodies,
    plain_request,
    record,
    scale,
    stream_request,
    take_baseline,
)

# CI halves the cache and the output lengths together (the same pressure, half the decode steps): 23 usable blocks
# of 16 tokens (368 tokens) and ~7 blocks a request; the full battery has 47 blocks (752 tokens), ~14 a request.
BLOCKS = scale(24, 48)
REQUESTS = scale(24, 64)
MAX_TOKENS = scale(100, 200)  # REQUESTS of them want ~7-19x the cache


def bodies() -> list[tuple[str, dict, bool]]:
    return mixed_bodies(REQUESTS, MAX_TOKENS, "request {i}: the key value cache", "request {i} under pressure")


def test_kv_exhaustion(make_server):
    srv = make_server("--num-gpu-blocks-override", str(BLOCKS))
    base = take_baseline(srv)
    plan = bodies()

    # the unpressured run: one request at a time
    reference: list[str] = []
    ref_ledger = Ledger()

    async def sequential() -> None:
        async with async_client() as c:
            for path, body, _ in plan:
                await plain_request(c, srv, path, body, ref_ledger, text_out=reference)

    asyncio.run(sequential())
    assert ref_ledger.by_outcome() == {"ok": REQUESTS}, ref_ledger.by_outcome()
    preempted_before = srv.metric("pagoda:num_preemptions_total")

    # all at once, streaming and not
    ledger = Ledger()
    texts: list[list[str]] = [[] for _ in plan]

    async def storm() -> None:
        async with async_client() as c:
            await asyncio.gather(*[
                (stream_request if streaming else plain_request)(c, srv, path, body, ledger, text_out=texts[i])
                for i, (path, body, streaming) in enumerate(plan)])

    asyncio.run(storm())
    assert ledger.by_outcome() == {"ok": REQUESTS}, ledger.by_outcome()
    preemptions = srv.metric("pagoda:num_preemptions_total") - preempted_before
    assert preemptions > 0, "the offered load never preempted anything"
    for i, t in enumerate(texts):
        assert t == [reference[i]], f"request {i}: output under pressure differs from the unpressured run"

    # a request that can never fit the cache (but fits the context): 400 at admission, at once
    r = srv.post("/v1/completions", {"model": MODEL, "prompt": "too big", "max_tokens": 1500}, timeout=5)
    assert r.status_code == 400, r.text
    assert "whole cache holds" in r.json()["error"]["message"]
    with httpx.Client(timeout=5) as c:
        r = c.post(srv.url + "/v1/completions", headers=srv.headers,
                   json={"model": MODEL, "prompt": "too big", "max_tokens": 1500, "stream": True})
        assert r.status_code == 400 and set(r.json()) == {"error"}
    figures = assert_recovered(srv, base, ledger)
    record("kv_exhaustion", ledger, kv_tokens=(BLOCKS - 1) * 16, preemptions=preemptions,
           identical_to_unpressured=REQUESTS, **figures)
