"""Recording one CUDA graph: the warm-up runs, then the capture, shared by the four graph sets (decode, prompt
chunks, mixed steps, verify steps).

Invariant: ``body`` runs twice eagerly before the capture, so that Triton has compiled, the caching allocator has
settled and whatever the body sets up on first use (a workspace, a kernel's handles) exists before the capture: a
start that reuses its Triton manifest skips the memory-profile forward, so a capture may be the first time a body's
logits or argmax run. The capture records ``body`` on ``pool``. In a dry pass of the start-up
precompiler (:mod:`pagoda.worker.jit_precompile`) ``body`` runs once, eagerly, and no graph is made: the pass only
has to meet every kernel variant the capture would launch, and ``body`` launches all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pagoda.worker.jit_precompile import in_dry_pass


def capture_graph(body: Callable[[], object], pool: Any) -> torch.cuda.CUDAGraph | None:
    """The graph of ``body`` (module docstring); None in a dry pass."""
    if in_dry_pass():
        body()
        return None
    for _ in range(2):
        body()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool):
        body()
    return g
