"""Measured device copy bandwidth (read + write bytes per second): the denominator of the bytes floors."""

from __future__ import annotations

import torch


def device_copy_bandwidth(numel: int, device: str | torch.device = "cuda") -> float:
    """Bytes per second of copying ``numel`` bf16 elements on ``device`` (3 warm-up copies, mean of 20)."""
    x = torch.empty(numel, dtype=torch.bfloat16, device=device).uniform_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20):
        y.copy_(x)
    e.record()
    torch.cuda.synchronize()
    bw = 2 * x.numel() * x.element_size() / (s.elapsed_time(e) / 20 / 1e3)
    del x, y
    torch.cuda.empty_cache()
    return bw
