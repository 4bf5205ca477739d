"""Bookkeeping of the host-memory KV tier (``--kv-offloading-size``): no tensors here.

A second, larger and slower pool of KV blocks in host memory, indexed by the same chained
block hashes as the device prefix cache (see :mod:`pagoda.core.kv_cache_manager`). When
the device pool evicts a cached block, its K/V is *stored* here (copied device -> host
before the block is overwritten); a later request whose prefix misses on the device but
hits here gets fresh device blocks *loaded* from the host copies instead of recomputing
them. The blocks of a preempted request are registered in the device cache, so they take
the same path when memory pressure evicts them.

Invariants: every host block is either free or holds exactly one hash; a hit is confirmed
against the stored (token ids, extra keys), never the hash alone; a block *locked* for a
load in the current step is never chosen as the destination of a store in that step (the
runner runs stores before loads, so that would overwrite what is about to be read).
"""

from __future__ import annotations

from collections import OrderedDict


class HostKVTier:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"the host KV tier needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # stack: pop() gives the lowest id first
        # hash -> host block, in LRU order (front = least recently stored or used).
        self._lru: OrderedDict[bytes, int] = OrderedDict()
        self.block_key: list[tuple | None] = [None] * num_blocks
        self._locked: set[int] = set()
        self.num_stored = 0  # blocks copied in (cumulative)
        self.num_loaded = 0  # blocks copied back to the device (cumulative)
        self.num_dropped = 0  # stored blocks overwritten by newer ones (LRU)

    @property
    def num_used_blocks(self) -> int:
        return len(self._lru)

    def usage(self) -> float:
        return len(self._lru) / self.num_blocks

    def lookup(self, block_hash: bytes, key: tuple) -> int | None:
        hb = self._lru.get(block_hash)
        if hb is None or self.block_key[hb] != key:
            return None
        return hb

    def take_for_load(self, block_hash: bytes) -> int:
        """Mark a hit as being loaded this step: locked, and most recently used."""
        hb = self._lru[block_hash]
        self._lru.move_to_end(block_hash)
        self._locked.add(hb)
        self.num_loaded += 1
        return hb

    def store(self, block_hash: bytes, key: tuple) -> int | None:
        """A host block to copy an evicted device block into, or None (already held / no room)."""
        if block_hash in self._lru:
            self._lru.move_to_end(block_hash)
            return None
        if self._free:
            hb = self._free.pop()
        else:
            victim = next((h for h, b in self._lru.items() if b not in self._locked), None)
            if victim is None:
                return None
            hb = self._lru.pop(victim)
            self.num_dropped += 1
        self._lru[block_hash] = hb
        self.block_key[hb] = key
        self.num_stored += 1
        return hb

    def end_step(self) -> None:
        """The step's loads are handed to the runner: later stores may reuse those blocks."""
        self._locked.clear()

    def reset(self) -> int:
        """Forget everything (``reset_prefix_cache``); returns how many blocks were dropped."""
        n = len(self._lru)
        self._lru.clear()
        self.block_key = [None] * self.num_blocks
        self._free = list(range(self.num_blocks - 1, -1, -1))
        self._locked.clear()
        return n

    def check_integrity(self) -> None:
        held = list(self._lru.values())
        if len(set(held)) != len(held):
            raise AssertionError("a host block holds two hashes")
        if set(held) & set(self._free) or len(held) + len(self._free) != self.num_blocks:
            raise AssertionError("host blocks: free + held != total")
