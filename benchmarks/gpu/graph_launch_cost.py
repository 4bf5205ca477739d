"""Host cost of launching a CUDA graph against its node count (issue 17: the verify step's graph is launched on the
critical path, after the previous step's tokens reach the host).

For graphs of N small kernels (N in ``--nodes``), the host time of ``CUDAGraph.replay()`` (the call's wall time,
the device idle before each timed call) and the time from the call to the device being idle again (launch plus
the kernels). Prints medians in microseconds.

Usage (GPU machine, repo root): python benchmarks/gpu/graph_launch_cost.py [--nodes 50 200 400 800] [--iters 200]

``--engine MODEL_DIR [--engine-args JSON]``: instead, the same two times for every CUDA graph an engine captured
(dummy weights; decode, verify, chunk and mixed graphs, by kind and size), replayed on their static buffers as
capture left them.
"""

from __future__ import annotations

import argparse
import time

import torch


def _capture(n: int, x: torch.Tensor) -> torch.cuda.CUDAGraph:
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            x.add_(1.0)
        with torch.cuda.graph(g, stream=s):
            for _ in range(n):
                x.add_(1.0)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    return g


def _time_replays(g, iters: int) -> tuple[list[float], list[float]]:
    """(host time of each ``replay()`` call, call to idle again), the device idle before each, sorted."""
    host, device_lag = [], []
    for i in range(iters + 10):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        g.replay()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= 10:
            host.append(t1 - t0)
            device_lag.append(t2 - t0)
    return sorted(host), sorted(device_lag)


def _engine_graphs(model: str, engine_args: str, iters: int) -> None:
    import json

    from pagoda.config import EngineArgs
    from pagoda.engine.llm_engine import LLMEngine

    eng = LLMEngine.from_engine_args(EngineArgs(model=model, load_format="dummy", **json.loads(engine_args)))
    runner = eng.core.runner
    for kind in ("graphs", "verify_graphs", "chunk_graphs", "mixed_graphs"):
        holder = getattr(runner, kind, None)
        if holder is None:
            continue
        for size, g in sorted(holder.graphs.items()):
            if not isinstance(g, torch.cuda.CUDAGraph):
                continue
            host, lag = _time_replays(g, iters)
            n = len(host)
            print(f"{kind:<14} size {size:4d}: replay() host {host[n // 2] * 1e6:7.1f} us (p10 "
                  f"{host[n // 10] * 1e6:.1f}, p90 {host[n * 9 // 10] * 1e6:.1f}); call to idle again "
                  f"{lag[n // 2] * 1e6:8.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[50, 200, 400, 800])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--engine", default=None, help="time the graphs of an engine on this model folder instead")
    ap.add_argument("--engine-args", default="{}", help="with --engine: extra EngineArgs as JSON")
    a = ap.parse_args()
    if a.engine:
        _engine_graphs(a.engine, a.engine_args, a.iters)
        return
    x = torch.zeros(1024, device="cuda")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  CUDA {torch.version.cuda}")
    for n in a.nodes:
        host, device_lag = _time_replays(_capture(n, x), a.iters)
        med = host[len(host) // 2] * 1e6
        lag = device_lag[len(device_lag) // 2] * 1e6
        print(f"nodes {n:4d}: replay() host {med:7.1f} us (p10 {host[len(host) // 10] * 1e6:.1f}, p90 "
              f"{host[len(host) * 9 // 10] * 1e6:.1f}); call to idle again {lag:.1f} us  ({med / n:.3f} us per node)")


if __name__ == "__main__":
    main()
