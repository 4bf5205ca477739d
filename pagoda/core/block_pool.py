"""Physical KV blocks: reference counts and an O(1) LRU free list.

Block 0 is the *null block*: never handed out, used to pad block tables.
Invariant (checked by :meth:`BlockPool.check_integrity`): every block other than
the null block is either on the free list with ``ref_cnt == 0`` or off it with
``ref_cnt > 0``; ``num_free + num_used == num_blocks - 1``.

Prefix caching: a full block whose K/V is in the cache can be registered under its
chained hash (see :mod:`pagoda.core.kv_cache_manager`). A registered block keeps its
hash while it sits unreferenced on the free list, so a later request can take it back
(:meth:`incref` removes it from the free list); :meth:`allocate` pops the least recently
freed block and evicts its hash. Cached-but-free blocks count as free. A lookup is
confirmed against the block's stored token ids and extra keys, never trusted on the
hash alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from pagoda.config import MIN_KV_BLOCKS


class NoFreeBlocksError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < MIN_KV_BLOCKS:
            raise ValueError(f"A KV cache needs at least {MIN_KV_BLOCKS} blocks, got {num_blocks}.")
        self.num_blocks = num_blocks
        self.ref_cnt = [0] * num_blocks
        # OrderedDict as an O(1) doubly linked list: pop from the front (least recently
        # freed), push to the back, remove from the middle (a cached block reused).
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(1, num_blocks))
        # Prefix cache: hash -> block id, and per block its hash and the (token ids, extra
        # keys) the hash was computed from, used to confirm a hit.
        self.cached: dict[bytes, int] = {}
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.block_key: list[tuple | None] = [None] * num_blocks
        self.num_evictions = 0
        # Called as (block_id, hash, key) just before a cached block is evicted to be reused
        # (the host KV tier keeps a copy); not called by reset_prefix_cache.
        self.on_evict: Callable[[int, bytes, tuple], None] | None = None

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - 1 - len(self._free)

    def usage(self) -> float:
        return self.num_used_blocks / max(1, self.num_blocks - 1)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise NoFreeBlocksError(f"need {n} blocks, {len(self._free)} free")
        out = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            block_hash, key = self.block_hash[block_id], self.block_key[block_id]
            if block_hash is not None:
                if self.on_evict is not None:
                    assert key is not None  # registered together with the hash
                    self.on_evict(block_id, block_hash, key)
                self._evict(block_id)
            self.ref_cnt[block_id] = 1
            out.append(block_id)
        return out

    def _evict(self, block_id: int) -> None:
        """Drop a registered block's hash (the caller checked it has one)."""
        block_hash = self.block_hash[block_id]
        assert block_hash is not None, f"block {block_id} is not in the prefix cache"
        del self.cached[block_hash]
        self.block_hash[block_id] = None
        self.block_key[block_id] = None
        self.num_evictions += 1

    def lookup(self, block_hash: bytes, key: tuple) -> int | None:
        """The cached block registered under ``block_hash`` whose stored key equals ``key``."""
        b = self.cached.get(block_hash)
        if b is None or self.block_key[b] != key:
            return None
        return b

    def register(self, block_id: int, block_hash: bytes, key: tuple) -> bool:
        """Make a full, computed block findable. False (nothing changes) if the hash is taken."""
        if self.ref_cnt[block_id] <= 0:
            raise RuntimeError(f"block {block_id} registered while not referenced")
        if block_hash in self.cached or self.block_hash[block_id] is not None:
            return False
        self.cached[block_hash] = block_id
        self.block_hash[block_id] = block_hash
        self.block_key[block_id] = key
        return True

    def reset_prefix_cache(self) -> int:
        """Forget the hashes of all unreferenced blocks; returns how many were dropped."""
        n = 0
        for b in list(self._free):
            if self.block_hash[b] is not None:
                self._evict(b)
                n += 1
        return n

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached)

    def incref(self, block_id: int) -> None:
        if self.ref_cnt[block_id] == 0:
            self._free.pop(block_id)
        self.ref_cnt[block_id] += 1

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference to each block; blocks reaching zero return to the free list.

        Blocks are freed in reverse so a request's tail blocks are reused first (its
        head blocks are likelier to be useful to a prefix cache).
        """
        for block_id in reversed(block_ids):
            rc = self.ref_cnt[block_id] - 1
            if rc < 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            self.ref_cnt[block_id] = rc
            if rc == 0:
                self._free[block_id] = None

    def check_integrity(self) -> None:
        for b in range(1, self.num_blocks):
            on_free = b in self._free
            if on_free != (self.ref_cnt[b] == 0):
                raise AssertionError(f"block {b}: ref_cnt={self.ref_cnt[b]} but on_free_list={on_free}")
        if self.ref_cnt[0] != 0 or 0 in self._free:
            raise AssertionError("null block 0 must never be allocated")
        if self.block_hash[0] is not None:
            raise AssertionError("null block 0 must never be cached")
        for h, b in self.cached.items():
            if self.block_hash[b] != h or self.block_key[b] is None:
                raise AssertionError(f"cache entry for block {b} does not match the block's hash")
        n_hashed = sum(h is not None for h in self.block_hash)
        if n_hashed != len(self.cached):
            raise AssertionError(f"{n_hashed} blocks carry a hash but {len(self.cached)} are in the cache map")
        if self.num_free_blocks + self.num_used_blocks != self.num_blocks - 1:
            raise AssertionError("free + used blocks != total - 1")
