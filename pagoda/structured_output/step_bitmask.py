"""A step's grammar bitmask: its rows in a host buffer reused across steps, and which rows a grammar filled.

:class:`BitmaskBuffer` holds the host rows. Nothing is allocated or cleared per step: a filled row is
written whole by its matcher (every word, :class:`~pagoda.structured_output.backend.Matcher`), and only the
rows no grammar filled are reset to all-allowed. On a GPU the rows are pinned and copied to the device
asynchronously: a copy from pageable memory waits for every kernel already queued (the forward in flight), so
the host would stall until the forward ends instead of queueing the sampling and running ahead.

Reuse: ``num_slots`` buffers are taken in turn (a step's host rows must outlive its sampling; pipeline
parallelism keeps up to ``pipeline_parallel_size`` steps in flight, each sampled when its result is asked
for), and before a slot is written again the host waits for that slot's last device copy (in steady state
it finished long ago: the step after it has completed).

:class:`StepBitmask` is what the runner gets: the rows on the sampling device and the list of rows a grammar
filled (the others allow everything and are not masked), so nothing scans the bitmask to find them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepBitmask:
    """``data`` [R, ceil(vocab_size / 32)] int32 on the sampling device, one row per sampled logits row (runner
    order); ``rows``: the rows a grammar filled, ascending and never empty (every other row is all-allowed);
    ``vocab_size``: the grammar's vocabulary (in a filled row, the logits columns past it are never allowed)."""

    data: torch.Tensor
    rows: list[int]
    vocab_size: int


class BitmaskBuffer:
    def __init__(self, vocab_size: int, device: torch.device, num_slots: int = 2, initial_rows: int = 1) -> None:
        self.vocab_size = vocab_size
        self.width = (vocab_size + 31) // 32
        self.device = device
        self._pin = device.type == "cuda"
        self._initial_rows = max(1, initial_rows)
        self._slots: list[torch.Tensor | None] = [None] * max(1, num_slots)
        self._copied: list[torch.cuda.Event | None] = [None] * len(self._slots)
        self._turn = 0
        self._last = 0

    def take(self, rows: int) -> torch.Tensor:
        """The next slot's first ``rows`` rows ([rows, width] int32, host) with stale contents: the caller writes
        every row (:meth:`reset_rows` for those no grammar fills)."""
        i = self._last = self._turn
        self._turn = (i + 1) % len(self._slots)
        ev = self._copied[i]
        if ev is not None:
            if not ev.query():  # the slot's last copy to the device (done in steady state: no wait, no sync)
                ev.synchronize()
            self._copied[i] = None
        buf = self._slots[i]
        if buf is None or buf.shape[0] < rows:
            n = max(rows, self._initial_rows, 0 if buf is None else 2 * buf.shape[0])
            buf = self._slots[i] = torch.empty((n, self.width), dtype=torch.int32, pin_memory=self._pin)
        return buf[:rows]

    @staticmethod
    def reset_rows(bitmask: torch.Tensor, filled: list[int]) -> None:
        """Every row of ``bitmask`` not in ``filled`` (ascending) to all-allowed (-1)."""
        n = bitmask.shape[0]
        if len(filled) == n:
            return
        if not filled:
            bitmask.fill_(-1)
            return
        start = 0
        for r in [*filled, n]:  # the runs between filled rows
            if r > start:
                bitmask[start:r].fill_(-1)
            start = r + 1

    def to_device(self, bitmask: torch.Tensor) -> torch.Tensor:
        """``bitmask`` (the rows last taken) on the sampling device; on a GPU an asynchronous copy from the pinned
        slot, which is not written again before the copy is done."""
        if self.device.type == "cpu":
            return bitmask
        if self.device.type != "cuda":  # no pinned memory: a plain copy
            return bitmask.to(self.device)
        out = bitmask.to(self.device, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self._copied[self._last] = ev
        return out
