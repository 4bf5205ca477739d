"""The CUDA primary context of device 0, created on a thread while the engine core imports torch.

Why: the core's start-up is one chain (import torch 3.7 s on the H200, then the engine), and torch's first CUDA
call spends 0.3 s creating the device's primary context. The driver API can do that before torch is imported,
through ctypes (which releases the GIL, so the import goes on meanwhile); torch then finds the context retained
and its first CUDA call takes 0.02 s (RESULTS.md, session 9).

Invariants: best effort and silent: no driver, no device, any error, and nothing happens. The context is the
*primary* one, which torch itself uses, so nothing else changes; :meth:`EarlyContext.keep_for` releases it when
the engine turns out not to use device 0 (another index, or the CPU), so no memory is held on a card the engine
does not use. ``CUDA_VISIBLE_DEVICES`` applies to the driver as to torch: device 0 here is torch's ``cuda:0``.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any


class EarlyContext:
    def __init__(self) -> None:
        self._lib: Any = None
        self._dev = ctypes.c_int(0)
        self._retained = False
        self._thread = threading.Thread(target=self._open, name="pagoda-early-cuda", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
            if lib.cuInit(0) != 0 or lib.cuDeviceGet(ctypes.byref(self._dev), 0) != 0:
                return
            ctx = ctypes.c_void_p()
            if lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), self._dev) == 0:
                self._lib, self._retained = lib, True
        except Exception:  # no driver, no device: torch will say what it has to say
            pass

    def keep_for(self, device: Any) -> None:
        """Call once the engine's device is known: the context is released unless it is CUDA device 0 (torch
        keeps its own reference to a context it uses, so the release never pulls one from under it)."""
        self._thread.join()
        index = getattr(device, "index", None)
        if self._retained and (getattr(device, "type", None) != "cuda" or index not in (None, 0)):
            self._lib.cuDevicePrimaryCtxRelease(self._dev)
            self._retained = False
