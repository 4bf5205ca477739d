"""Physical KV blocks: reference counts and an O(1) LRU free list.

Block 0 is the *null block*: never handed out, used to pad block tables.
Invariant (checked by :meth:`BlockPool.check_integrity`): every block other than
the null block is either on the free list with ``ref_cnt == 0`` or off it with
``ref_cnt > 0``; ``num_free + num_used == num_blocks - 1``.
"""

from __future__ import annotations

from collections import OrderedDict


class NoFreeBlocksError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"A KV cache needs at least 2 blocks, got {num_blocks}.")
        self.num_blocks = num_blocks
        self.ref_cnt = [0] * num_blocks
        # OrderedDict as an O(1) doubly linked list: pop from the front (least recently
        # freed), push to the back, remove from the middle (a cached block reused).
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(1, num_blocks))

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
            self.ref_cnt[block_id] = 1
            out.append(block_id)
        return out

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
