"""Per-request block tables on top of the :class:`BlockPool`.

Invariant: a request holding ``n`` blocks can store ``n * block_size`` tokens and
``n == ceil(num_allocated_tokens / block_size)`` after :meth:`allocate_slots`.

Automatic prefix caching (``enable_prefix_caching``): block ``i`` of a request, once
full and computed, is registered under ``H_i = sha256(H_{i-1} | extra_i | tokens_i)``
where ``extra_0`` is the request's ``cache_salt`` and LoRA adapter id (later blocks inherit them
through the chain). At admission (:meth:`get_computed_blocks`) the longest run of leading full
blocks found in the pool -- confirmed by the stored token ids -- is reused by reference;
the last prompt token is never served from the cache, so the step that admits a request
always computes at least one token and samples from it.

Host-memory tier (optional, :mod:`pagoda.core.host_tier`): a cached block the pool evicts
is stored in host memory (``pending_swap_out``); at admission the chain of hits continues
into the host tier (:meth:`get_host_hits`), and those blocks get fresh device blocks
that are loaded from the host copies (``pending_swap_in``) before the step's forward.
"""

from __future__ import annotations

import hashlib
from array import array

from pagoda.core.block_pool import BlockPool
from pagoda.core.host_tier import HostKVTier
from pagoda.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False,
        host_tier: HostKVTier | None = None,
    ) -> None:
        if host_tier is not None and not enable_prefix_caching:
            raise ValueError(
                "The host KV tier (--kv-offloading-size) finds blocks by their prefix-cache hashes; "
                "it needs prefix caching (drop --no-enable-prefix-caching)."
            )
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self.host = host_tier
        # (device block, host block) copies for the runner to make before the next forward:
        # stores of evicted blocks first, then loads of host hits.
        self.pending_swap_out: list[tuple[int, int]] = []
        self.pending_swap_in: list[tuple[int, int]] = []
        if host_tier is not None:
            self.pool.on_evict = self._store_evicted
        self.req_blocks: dict[str, list[int]] = {}
        # Bumped whenever a request's block list is created anew (first allocation, or after
        # a preemption freed it), so a cached copy of its block table can tell it is stale.
        self.req_epoch: dict[str, int] = {}
        self._epoch = 0
        # Per request: how many of its leading blocks are registered in the prefix cache.
        self.req_num_hashed: dict[str, int] = {}
        # Prefix-cache counters, in tokens (vLLM's prefix_cache_queries / prefix_cache_hits): one lookup per
        # admission of a request never preempted; a preempted request's re-admissions count apart (vLLM's
        # preempted_queries / preempted_hits, which /metrics does not export either).
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.preempted_prefix_cache_queries = 0
        self.preempted_prefix_cache_hits = 0
        # The host tier's share, counted apart as vLLM counts a KV connector's (external_prefix_cache_queries /
        # _hits: every admission's prompt tokens / those loaded from the host); prefix_cache_hits is the device's.
        self.external_prefix_cache_queries = 0
        self.external_prefix_cache_hits = 0
        # Blocks shared by reference between the samples of n > 1 requests (see fork).
        self.num_forked_blocks = 0

    # --------------------------------------------------------------- hashing
    def block_hashes(self, request: Request, num_blocks: int) -> list[bytes]:
        """Chained hashes of the request's first ``num_blocks`` full blocks (memoized on it)."""
        hashes = request.block_hashes
        bs = self.block_size
        toks = request.all_token_ids
        while len(hashes) < num_blocks:
            i = len(hashes)
            h = hashlib.sha256(hashes[-1] if hashes else b"pagoda-root")
            h.update(self._extra_bytes(request, i))
            h.update(array("q", toks[i * bs : (i + 1) * bs]).tobytes())
            hashes.append(h.digest())
        return hashes

    @staticmethod
    def _extra(request: Request, i: int) -> str | tuple[str | None, int] | None:
        """Block ``i``'s extra key: on the first block the ``cache_salt`` and, for a LoRA request, its adapter id
        (``(salt, id)``), so that no block is shared across salts or adapters (later blocks inherit both through
        the chain); None elsewhere."""
        if i:
            return None
        if request.adapter_id is None:
            return request.cache_salt
        return request.cache_salt, request.adapter_id

    def _extra_bytes(self, request: Request, i: int) -> bytes:
        extra = self._extra(request, i)
        if extra is None:
            return b"\x00"
        if isinstance(extra, str):
            return b"\x01" + extra.encode("utf-8") + b"\x00"
        salt, adapter = extra
        return (b"\x02" + (b"\x00" if salt is None else b"\x01" + salt.encode("utf-8") + b"\x00")
                + str(adapter).encode("ascii") + b"\x00")

    def _key(self, request: Request, i: int) -> tuple:
        bs = self.block_size
        return (tuple(request.all_token_ids[i * bs : (i + 1) * bs]), self._extra(request, i))

    def get_computed_blocks(self, request: Request) -> list[int]:
        """Leading cached blocks usable by a request that holds none (no references taken).

        Only full blocks, and never one holding the last token: that token is always computed.
        """
        if not self.enable_prefix_caching or request.sampling_params.prompt_logprobs is not None:
            return []
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for i, h in enumerate(self.block_hashes(request, max_blocks)):
            b = self.pool.lookup(h, self._key(request, i))
            if b is None:
                break
            hits.append(b)
        return hits

    def _store_evicted(self, block_id: int, block_hash: bytes, key: tuple) -> None:
        assert self.host is not None  # installed as on_evict only with a host tier
        hb = self.host.store(block_hash, key)
        if hb is not None:
            self.pending_swap_out.append((block_id, hb))

    def get_host_hits(self, request: Request, num_device_hits: int) -> list[int]:
        """Host blocks continuing the chain after ``num_device_hits`` device hits (not yet taken)."""
        if self.host is None or not self.enable_prefix_caching or request.sampling_params.prompt_logprobs is not None:
            return []
        max_blocks = (request.num_tokens - 1) // self.block_size
        hashes = self.block_hashes(request, max_blocks)
        out: list[int] = []
        for i in range(num_device_hits, max_blocks):
            hb = self.host.lookup(hashes[i], self._key(request, i))
            if hb is None:
                break
            out.append(hb)
        return out

    def take_swaps(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The pending (device, host) stores and (host, device) loads; the step's loads unlock."""
        out, inn = self.pending_swap_out, self.pending_swap_in
        self.pending_swap_out, self.pending_swap_in = [], []
        if self.host is not None:
            self.host.end_step()
        return out, inn

    def cache_full_blocks(self, request: Request, num_tokens: int | None = None) -> list[int]:
        """Register the request's full blocks within its first ``num_tokens`` tokens (default:
        the computed ones), whose token ids must be known. Returns the blocks registered now.

        The scheduler registers a block as soon as the step that writes its K/V is scheduled:
        every later reader runs after that write (a reader in the same step too, since each
        layer writes the step's K/V before its attention reads the cache).
        """
        if not self.enable_prefix_caching:
            return []
        rid = request.request_id
        blocks = self.req_blocks.get(rid)
        if blocks is None:
            return []
        done = self.req_num_hashed.get(rid, 0)
        upto = request.num_computed_tokens if num_tokens is None else min(num_tokens, request.num_tokens)
        full = min(upto // self.block_size, len(blocks))
        if full <= done:
            return []
        hashes = self.block_hashes(request, full)
        registered = []
        for i in range(done, full):
            # False when identical content is already cached in another block: this one
            # stays unhashed and is plain free space once released.
            if self.pool.register(blocks[i], hashes[i], self._key(request, i)):
                registered.append(blocks[i])
        self.req_num_hashed[rid] = full
        return registered

    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def usable_blocks(self) -> int:
        return self.pool.num_blocks - 1

    def blocks_needed(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: list[int] | None = None,
        host_blocks: list[int] | None = None,
    ) -> bool:
        """Make room for ``num_computed_tokens + num_new_tokens`` tokens. False if out of blocks.

        ``computed_blocks`` (from :meth:`get_computed_blocks`) and then ``host_blocks`` (from
        :meth:`get_host_hits`), only for a request holding no blocks: the device hits are
        taken by reference and become the head of its list; each host hit gets a fresh device
        block, registered in the device cache and loaded from the host before the forward. On
        success the request's ``num_computed_tokens`` is set to the tokens they hold. On
        failure nothing changes.
        """
        rid = request.request_id
        blocks = self.req_blocks.get(rid)
        if computed_blocks or host_blocks:
            computed_blocks = computed_blocks or []
            host_blocks = host_blocks or []
            if blocks:
                raise RuntimeError(f"request {rid} already holds blocks; cached blocks only at admission")
            n_hit = len(computed_blocks) + len(host_blocks)
            num_computed = n_hit * self.block_size
            need = self.blocks_needed(num_computed + num_new_tokens) - len(computed_blocks)
            # Cached blocks nobody references sit on the free list: taking them shrinks it.
            reclaim = sum(1 for b in computed_blocks if self.pool.ref_cnt[b] == 0)
            if need > self.pool.num_free_blocks - reclaim:
                return False
            for b in computed_blocks:
                self.pool.incref(b)
            # Lock the host hits first: the allocation below may evict device blocks into the tier.
            loads: list[int] = []
            if host_blocks:
                assert self.host is not None, "host hits without a host tier"
                hashes = self.block_hashes(request, n_hit)
                loads = [self.host.take_for_load(hashes[len(computed_blocks) + j]) for j in range(len(host_blocks))]
            blocks = self.req_blocks[rid] = list(computed_blocks)
            self._epoch += 1
            self.req_epoch[rid] = self._epoch
            if need > 0:
                blocks.extend(self.pool.allocate(need))
            for j, hb in enumerate(loads):
                i = len(computed_blocks) + j
                self.pending_swap_in.append((hb, blocks[i]))
                self.pool.register(blocks[i], hashes[i], self._key(request, i))
            self.req_num_hashed[rid] = n_hit
            request.num_computed_tokens = num_computed
            return True
        if blocks is None:
            blocks = self.req_blocks[rid] = []
            self._epoch += 1
            self.req_epoch[rid] = self._epoch
        need = self.blocks_needed(request.num_computed_tokens + num_new_tokens) - len(blocks)
        if need <= 0:
            return True
        if need > self.pool.num_free_blocks:
            return False
        blocks.extend(self.pool.allocate(need))
        return True

    def fork(self, parent: Request, child: Request, num_shared_tokens: int) -> tuple[int, int] | None | bool:
        """Give ``child`` (holding no blocks) the parent's K/V for its first ``num_shared_tokens``.

        Parallel sampling: the samples of one prompt share its blocks. Full blocks are shared
        by reference; a partially filled last block is *copied* into a fresh block, because
        the child will write its own tokens into it (copy-on-write, done before the next
        forward). Returns the ``(src, dst)`` block pair to copy, ``None`` when no copy is
        needed, or ``False`` (nothing changed) when no free block is left for the child's tail.
        On success the child's ``num_computed_tokens`` is ``num_shared_tokens``.
        """
        pblocks = self.req_blocks[parent.request_id]
        bs = self.block_size
        k = num_shared_tokens // bs  # blocks entirely below num_shared_tokens: shared
        if self.pool.num_free_blocks < 1:
            return False
        shared = pblocks[:k]
        for b in shared:
            self.pool.incref(b)
        (tail,) = self.pool.allocate(1)  # the block the child writes next
        rid = child.request_id
        self.req_blocks[rid] = shared + [tail]
        self._epoch += 1
        self.req_epoch[rid] = self._epoch
        self.req_num_hashed[rid] = min(self.req_num_hashed.get(parent.request_id, 0), k)
        child.num_computed_tokens = num_shared_tokens
        child.block_hashes = list(parent.block_hashes[: min(len(parent.block_hashes), num_shared_tokens // bs)])
        self.num_forked_blocks += k
        return (pblocks[k], tail) if num_shared_tokens % bs else None

    def free(self, request: Request) -> None:
        blocks = self.req_blocks.pop(request.request_id, None)
        self.req_epoch.pop(request.request_id, None)
        self.req_num_hashed.pop(request.request_id, None)
        if blocks:
            self.pool.free(blocks)

    def get_block_ids(self, request_id: str) -> list[int]:
        return self.req_blocks.get(request_id, [])

    def usage(self) -> float:
        return self.pool.usage()

    def reset_prefix_cache(self) -> int:
        """Forget all unreferenced cached blocks (device and host tier); returns how many."""
        n = self.pool.reset_prefix_cache()
        if self.host is not None:
            n += self.host.reset()
        return n

    def check_integrity(self) -> None:
        self.pool.check_integrity()
        if self.host is not None:
            self.host.check_integrity()
        # Shared (prefix-cached) blocks are held by several requests: each holder is one reference.
        refs: dict[int, int] = {}
        for blocks in self.req_blocks.values():
            for b in blocks:
                refs[b] = refs.get(b, 0) + 1
        if len(refs) != self.pool.num_used_blocks:
            raise AssertionError(f"requests hold {len(refs)} blocks but the pool has {self.pool.num_used_blocks} used")
        for b, n in refs.items():
            if self.pool.ref_cnt[b] != n:
                raise AssertionError(f"block {b} is held by {n} requests but has ref_cnt={self.pool.ref_cnt[b]}")
        for rid, n in self.req_num_hashed.items():
            if n > len(self.req_blocks.get(rid, ())):
                raise AssertionError(f"request {rid}: {n} hashed blocks but holds fewer")
