"""Host cost of launching a CUDA graph against its node count (issue 17: the verify step's graph is launched on the
critical path, after the previous step's tokens reach the host).

For graphs of N small kernels (N in ``--nodes``), the host time of ``CUDAGraph.replay()`` (the call's wall time,
the device idle before each timed call) and the time from the call to the device being idle again (launch plus
the kernels). Prints medians in microseconds.

Usage (GPU machine, repo root): python benchmarks/gpu/graph_launch_cost.py [--nodes 50 200 400 800] [--iters 200]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[50, 200, 400, 800])
    ap.add_argument("--iters", type=int, default=200)
    a = ap.parse_args()
    x = torch.zeros(1024, device="cuda")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  CUDA {torch.version.cuda}")
    for n in a.nodes:
        g = _capture(n, x)
        host, device_lag = [], []
        for i in range(a.iters + 10):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            g.replay()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            if i >= 10:
                host.append(t1 - t0)
                device_lag.append(t2 - t0)
        host.sort()
        device_lag.sort()
        med = host[len(host) // 2] * 1e6
        lag = device_lag[len(device_lag) // 2] * 1e6
        print(f"nodes {n:4d}: replay() host {med:7.1f} us (p10 {host[len(host) // 10] * 1e6:.1f}, p90 "
              f"{host[len(host) * 9 // 10] * 1e6:.1f}); call to idle again {lag:.1f} us  ({med / n:.3f} us per node)")


if __name__ == "__main__":
    main()
