"""A persistent CPU copy of the running requests' block tables.

Rebuilding a ``[B, max_blocks]`` tensor from Python lists every step costs about a
millisecond at a few hundred requests. Instead each request keeps a row here; a step
copies only the block ids appended since the last step (usually none, one block per
``block_size`` decode steps) and gathers its rows with one index op.

A row is valid for ``(request_id, epoch)``; the KV manager bumps a request's epoch
when its block list is created anew (after preemption), which rewrites the row.
Rows of requests that left are reclaimed lazily, least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class BlockTableCache:
    def __init__(self, max_rows: int, max_blocks: int, pin: bool) -> None:
        self.max_blocks = max_blocks
        self.table = torch.zeros((max_rows, max_blocks), dtype=torch.int32, pin_memory=pin)
        self._np = self.table.numpy()
        self.rows: OrderedDict[str, list[int]] = OrderedDict()  # request id -> [row, epoch, length]
        self.free_rows = list(range(max_rows - 1, -1, -1))

    def rows_for(self, request_ids: list[str], blocks: list[list[int]], epochs: list[int]) -> list[int]:
        """Sync each request's row with its block list; return the rows (in order)."""
        out = []
        in_use = set(request_ids)
        for rid, bl, ep in zip(request_ids, blocks, epochs, strict=True):
            entry = self.rows.get(rid)
            if entry is None or entry[1] != ep:
                if entry is None:
                    entry = [self._take_row(in_use), ep, 0]
                    self.rows[rid] = entry
                else:
                    entry[1], entry[2] = ep, 0
            else:
                self.rows.move_to_end(rid)
            n = len(bl)
            if n > self.max_blocks:
                raise ValueError(f"request {rid} holds {n} blocks, more than {self.max_blocks} per request")
            if n > entry[2]:
                self._np[entry[0], entry[2]:n] = bl[entry[2]:n]
                entry[2] = n
            out.append(entry[0])
        return out

    def _take_row(self, in_use: set[str]) -> int:
        if not self.free_rows:
            for rid in list(self.rows):  # least recently used first
                if rid not in in_use:
                    self.free_rows.append(self.rows.pop(rid)[0])
                    break
            else:
                raise RuntimeError("block table cache has no free row")
        return self.free_rows.pop()
