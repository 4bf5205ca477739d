"""CUDA-graph timing shared by the GPU benches (launch gaps as in the engine, which replays decode graphs)."""

from __future__ import annotations

from collections.abc import Callable

import torch

REPS = 50


def graph_time_us(fn: Callable[[], object], reps: int = REPS) -> float:
    """Mean microseconds of ``fn`` replayed ``reps`` times inside one CUDA graph (3 warm-up calls on a side
    stream first, one untimed replay, then 5 timed replays)."""
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (5 * reps)


def graph_median_ms(fn: Callable[[], object], rounds: int = 9, replays: int = 5) -> float:
    """Median milliseconds of one replay of ``fn`` captured as a CUDA graph: ``fn`` is called once first (its
    compiles), captured, replayed once untimed, then ``rounds`` timings of ``replays`` back-to-back replays."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(rounds):
        start.record()
        for _ in range(replays):
            g.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / replays)
    return sorted(times)[len(times) // 2]
