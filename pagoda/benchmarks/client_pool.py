"""``pagoda bench serve --num-client-processes K``: the load generator spread over K processes.

Why: at 256 concurrent streams one Python process parsing ~10,000 SSE chunks a second used 0.8 of a core on the H200
machine, and its own lag merged chunks: 62 % of them arrived within a quarter of a TPOT of the previous one and the
ITL p50 read 0.09 ms (benchmarks/RESULTS.md, session 7), so no inter-token figure of that run could be trusted.

How: the prompts are dealt round-robin to K spawned processes. Process ``i`` runs the same request loop as the
single-process bench (``serve._run_requests``) on its share: ``--max-concurrency`` divided as evenly as it goes,
``--request-rate`` / K with its own arrival seed, its own HTTP client, from a common start time. Each sends back its
results as JSON (plain fields) with its CPU seconds and end time; the parent puts them back in prompt order. The run's
duration is from the common start to the last process's end; the load generator's CPU share is the busiest process's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import time
from typing import Any

START_DELAY_S = 1.0  # the processes start (interpreter, imports, client) before the common start time


def split_concurrency(total: int | None, k: int) -> list[int | None]:
    """``--max-concurrency`` per process (None: unlimited in each)."""
    if total is None:
        return [None] * k
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def run_sharded(args: argparse.Namespace, url: str, headers: dict[str, str], model: str, chat: bool,
                prompts: list[tuple[str, int, int]]) -> tuple[list[Any], float, float]:
    """(results in prompt order, duration s, the busiest process's CPU share) of the timed run over K processes."""
    from pagoda.benchmarks.serve import RequestResult

    k = args.num_client_processes
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + START_DELAY_S
    plain = argparse.Namespace(**{key: v for key, v in vars(args).items() if key != "func"})
    procs, conns = [], []
    for i, conc in enumerate(split_concurrency(args.max_concurrency, k)):
        recv, send = ctx.Pipe(duplex=False)
        shard, indices = prompts[i::k], list(range(len(prompts)))[i::k]
        p = ctx.Process(target=_shard_main, args=(plain, i, conc, url, headers, model, chat, shard, indices, start_at,
                                                  send),
                        name=f"pagoda-bench-client-{i}", daemon=True)
        p.start()
        send.close()
        procs.append(p)
        conns.append(recv)
    outs = []
    for i, (p, conn) in enumerate(zip(procs, conns, strict=True)):
        try:
            outs.append(json.loads(conn.recv()))
        except EOFError:
            p.join()
            raise RuntimeError(f"bench client process {i} exited with code {p.exitcode} before sending its "
                               "results") from None
        p.join()
    results: list[Any] = [None] * len(prompts)
    for i, out in enumerate(outs):
        for j, r in enumerate(out["results"]):
            r["chunks"] = [tuple(c) for c in r["chunks"]]
            results[i + j * k] = RequestResult(**r)
    duration = max(out["end"] for out in outs) - start_at
    share = max(out["cpu"] for out in outs) / duration if duration > 0 else 0.0
    return results, duration, share


def _shard_main(args: argparse.Namespace, index: int, concurrency: int | None, url: str, headers: dict[str, str],
                model: str, chat: bool, prompts: list[tuple[str, int, int]], indices: list[int], start_at: float,
                conn: Any) -> None:
    args.max_concurrency = concurrency
    args.request_rate = args.request_rate / args.num_client_processes
    args.seed = args.seed + 1000 * (index + 1)  # its own arrival times (the prompts are already drawn)
    results, cpu = asyncio.run(_shard(args, url, headers, model, chat, prompts, indices, start_at))
    conn.send(json.dumps({"results": [dataclasses.asdict(r) for r in results], "cpu": cpu, "end": time.time()}))
    conn.close()


async def _shard(args: argparse.Namespace, url: str, headers: dict[str, str], model: str, chat: bool,
                 prompts: list[tuple[str, int, int]], indices: list[int], start_at: float) -> tuple[list[Any], float]:
    import httpx

    from pagoda.benchmarks.serve import _run_requests

    limit = args.max_concurrency or len(prompts)
    timeout = httpx.Timeout(args.request_timeout, connect=30.0)
    async with httpx.AsyncClient(timeout=timeout, verify=not args.insecure,
                                 limits=httpx.Limits(max_connections=limit + 4,
                                                     max_keepalive_connections=limit + 4)) as client:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        results, _ = await _run_requests(args, client, url, headers, model, chat, prompts, indices)
        return results, time.process_time() - cpu
