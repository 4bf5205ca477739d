"""The engine core's early CUDA context (pagoda/engine/early_cuda.py), with a fake driver library: retained on a
thread, released when the engine does not use device 0, harmless when there is no driver."""

from __future__ import annotations

import ctypes

import pytest
import torch

from pagoda.engine import early_cuda


class _FakeDriver:
    def __init__(self, init_result: int = 0):
        self.calls: list[str] = []
        self.init_result = init_result

    def cuInit(self, flags):
        self.calls.append("init")
        return self.init_result

    def cuDeviceGet(self, dev, ordinal):
        self.calls.append(f"get{ordinal}")
        return 0

    def cuDevicePrimaryCtxRetain(self, ctx, dev):
        self.calls.append("retain")
        return 0

    def cuDevicePrimaryCtxRelease(self, dev):
        self.calls.append("release")
        return 0


@pytest.mark.parametrize(("device", "released"), [(torch.device("cuda"), False), (torch.device("cuda", 0), False),
                                                  (torch.device("cuda", 1), True), (torch.device("cpu"), True)])
def test_context_kept_only_for_device_0(monkeypatch, device, released):
    fake = _FakeDriver()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    early = early_cuda.EarlyContext()
    early.keep_for(device)
    assert fake.calls[:3] == ["init", "get0", "retain"]
    assert ("release" in fake.calls) == released
    early.keep_for(device)  # idempotent: released at most once
    assert fake.calls.count("release") == int(released)


def test_no_driver_or_failed_init_does_nothing(monkeypatch):
    def missing(name):
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    early_cuda.EarlyContext().keep_for(torch.device("cpu"))
    fake = _FakeDriver(init_result=100)  # CUDA_ERROR_NO_DEVICE
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    early_cuda.EarlyContext().keep_for(torch.device("cpu"))
    assert fake.calls == ["init"]
