"""Per-request block tables on top of the :class:`BlockPool`.

Invariant: a request holding ``n`` blocks can store ``n * block_size`` tokens and
``n == ceil(num_allocated_tokens / block_size)`` after :meth:`allocate_slots`.
"""

from __future__ import annotations

from pagoda.core.block_pool import BlockPool
from pagoda.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.req_blocks: dict[str, list[int]] = {}
        # Bumped whenever a request's block list is created anew (first allocation, or after
        # a preemption freed it), so a cached copy of its block table can tell it is stale.
        self.req_epoch: dict[str, int] = {}
        self._epoch = 0

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def usable_blocks(self) -> int:
        return self.pool.num_blocks - 1

    def blocks_needed(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def allocate_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Make room for ``num_computed_tokens + num_new_tokens`` tokens. False if out of blocks."""
        blocks = self.req_blocks.get(request.request_id)
        if blocks is None:
            blocks = self.req_blocks[request.request_id] = []
            self._epoch += 1
            self.req_epoch[request.request_id] = self._epoch
        need = self.blocks_needed(request.num_computed_tokens + num_new_tokens) - len(blocks)
        if need <= 0:
            return True
        if need > self.pool.num_free_blocks:
            return False
        blocks.extend(self.pool.allocate(need))
        return True

    def free(self, request: Request) -> None:
        blocks = self.req_blocks.pop(request.request_id, None)
        self.req_epoch.pop(request.request_id, None)
        if blocks:
            self.pool.free(blocks)

    def get_block_ids(self, request_id: str) -> list[int]:
        return self.req_blocks.get(request_id, [])

    def usage(self) -> float:
        return self.pool.usage()

    def check_integrity(self) -> None:
        self.pool.check_integrity()
        held = sum(len(b) for b in self.req_blocks.values())
        if held != self.pool.num_used_blocks:
            raise AssertionError(f"requests hold {held} blocks but the pool has {self.pool.num_used_blocks} used")
