"""The paged KV cache's tensors: sizing, allocation, and block transfers.

Layout per layer: ``(k_cache, v_cache)``, each ``[num_blocks, block_size, num_kv_heads,
head_dim]`` (``HND`` backends: heads before tokens), in the KV-cache dtype (the model dtype, or one byte per
element for ``--kv-cache-dtype fp8``: see :mod:`pagoda.attention.kv_quant`). How the bytes lie is the
backend's ``kv_layout`` (:data:`KV_LAYOUTS`); the block is always the outermost dimension. The host tier has
the same layout and dtype in (pinned, on CUDA) host memory; block transfers copy bytes.

Sizing on CUDA is per engine, as vLLM's ``gpu_memory_utilization``: the KV cache gets
``total × gpu_memory_utilization − (this engine's own use) − activation peak``, where the own
use is what the device lost since :class:`MemorySnapshot` was taken just before the model was
loaded (weights, non-torch allocations such as kernels' workspaces). Memory in use before
(another engine of this process that is still alive, another process) is not this engine's:
it is logged with its size, and when the engine's share is more than was free, the share
shrinks to the same fraction of what was free.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

import torch

from pagoda.attention.kv_quant import dtype_name, raw

logger = logging.getLogger("pagoda")

CPU_DEFAULT_KV_BYTES = 2 * 1024**3
# Use of the card before loading above this is reported (a CUDA context alone takes ~0.5 GiB).
_OTHER_USE_NOTE_BYTES = 2 * 1024**3

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]


def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    elt = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * elt


KV_LAYOUTS = ("NHD", "HND", "NHD_BY_HEAD")
"""How one layer's caches lie in memory (a backend's ``kv_layout``):

* ``NHD``: ``[blocks, block_size, heads, dim]`` tensors, contiguous;
* ``HND``: ``[blocks, heads, block_size, dim]`` tensors (the torch backend's shape);
* ``NHD_BY_HEAD``: the ``NHD`` shape, as a view of ``[blocks, heads, block_size, dim]`` memory: one head's keys of
  a block are ``block_size * dim`` contiguous elements (a kernel program reads whole runs, not rows of ``dim``).
"""


def _zeros(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
           device: torch.device, layout: str) -> torch.Tensor:
    if layout not in KV_LAYOUTS:
        raise ValueError(f"unknown KV cache layout {layout!r}; one of {KV_LAYOUTS}")
    if layout == "NHD":
        return torch.zeros((num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype, device=device)
    mem = torch.zeros((num_blocks, num_kv_heads, block_size, head_dim), dtype=dtype, device=device)
    return mem if layout == "HND" else mem.permute(0, 2, 1, 3)


def allocate_kv_caches(
    num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
    device: torch.device, layout: str = "NHD",
) -> KVCaches:
    dims = (num_blocks, block_size, num_kv_heads, head_dim, dtype, device, layout)
    return [(_zeros(*dims), _zeros(*dims)) for _ in range(num_layers)]


def _like(x: torch.Tensor, num_blocks: int, pin: bool) -> torch.Tensor:
    """Zeros with ``x``'s strides (so its memory order) and ``num_blocks`` blocks, in host memory."""
    return torch.empty_strided((num_blocks, *x.shape[1:]), x.stride(), dtype=x.dtype, pin_memory=pin).zero_()


def allocate_host_caches(kv_caches: KVCaches, num_blocks: int, pin: bool) -> KVCaches:
    """Host copies of the device layout with ``num_blocks`` blocks per layer."""
    return [(_like(k, num_blocks, pin), _like(v, num_blocks, pin)) for k, v in kv_caches]


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """``x`` as raw bytes in memory order (contiguous; the block dimension first), for block copies."""
    strides = x.stride()
    order = sorted(range(x.dim()), key=lambda i: -strides[i])
    return raw(x).permute(*order)


@torch.inference_mode()
def swap_out(kv_caches: KVCaches, host_caches: KVCaches, pairs: list[tuple[int, int]], device: torch.device) -> None:
    """(device block, host block) pairs, every layer (before the device block is overwritten)."""
    dev = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=device)
    host = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    for (k, v), (hk, hv) in zip(kv_caches, host_caches, strict=True):
        _blocks(hk).index_copy_(0, host, _blocks(k).index_select(0, dev).cpu())
        _blocks(hv).index_copy_(0, host, _blocks(v).index_select(0, dev).cpu())


@torch.inference_mode()
def swap_in(kv_caches: KVCaches, host_caches: KVCaches, pairs: list[tuple[int, int]], device: torch.device) -> None:
    """(host block, device block) pairs, every layer (before the forward reads them)."""
    host = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    dev = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=device)
    for (k, v), (hk, hv) in zip(kv_caches, host_caches, strict=True):
        _blocks(k).index_copy_(0, dev, _blocks(hk).index_select(0, host).to(device, non_blocking=True))
        _blocks(v).index_copy_(0, dev, _blocks(hv).index_select(0, host).to(device, non_blocking=True))


@torch.inference_mode()
def copy_blocks(kv_caches: KVCaches, pairs: list[tuple[int, int]], device: torch.device) -> None:
    """KV of block ``src`` -> block ``dst`` in every layer (copy-on-write of shared blocks)."""
    src = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=device)
    dst = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=device)
    for k, v in kv_caches:
        _blocks(k).index_copy_(0, dst, _blocks(k).index_select(0, src))
        _blocks(v).index_copy_(0, dst, _blocks(v).index_select(0, src))


@dataclass(frozen=True)
class MemorySnapshot:
    """The card before this engine loaded anything: free bytes, total, and bytes of live torch
    tensors of this process (another engine, user tensors)."""

    free: int
    total: int
    torch_allocated: int

    @staticmethod
    def take() -> MemorySnapshot:
        gc.collect()  # engines dropped but not yet collected give their memory back first
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        return MemorySnapshot(free, total, torch.cuda.memory_allocated())

    @property
    def other_use(self) -> int:
        return self.total - self.free


def cuda_kv_budget(before: MemorySnapshot, activation_peak: int, utilization: float) -> int:
    """Bytes for the KV cache (see the module docstring); raises when nothing is left."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    own = max(0, before.free - free)
    _note_other_use(before)
    share = int(total * utilization)
    if share > before.free:
        shrunk = int(before.free * utilization)
        logger.warning(
            "gpu_memory_utilization=%s asks for %.1f GiB but only %.1f GiB were free when this engine started; "
            "it takes %.1f GiB (the same fraction of what was free).",
            utilization, share / 2**30, before.free / 2**30, shrunk / 2**30,
        )
        share = shrunk
    budget = share - own - activation_peak
    if budget <= 0:
        raise ValueError(
            f"No GPU memory left for the KV cache: this engine's weights and other use take {own / 2**30:.1f} GiB, "
            f"activations {activation_peak / 2**30:.1f} GiB, and {before.other_use / 2**30:.1f} GiB of the "
            f"{total / 2**30:.1f} GiB card were in use before it loaded"
            f"{_other_engine_hint(before)}, at gpu_memory_utilization={utilization}. Raise "
            f"--gpu-memory-utilization or lower --max-num-batched-tokens."
        )
    return budget


def _other_engine_hint(before: MemorySnapshot) -> str:
    if before.torch_allocated <= 0:
        return ""
    return (f" ({before.torch_allocated / 2**30:.1f} GiB by live tensors of this process: another engine "
            f"not yet shut down? call LLM.shutdown() or drop it)")


def _note_other_use(before: MemorySnapshot) -> None:
    if before.other_use > _OTHER_USE_NOTE_BYTES or before.torch_allocated > 0:
        logger.warning(
            "%.1f GiB of the GPU (%.1f GiB total) were in use before this engine loaded%s; "
            "the KV cache is sized from this engine's own use and what is free.",
            before.other_use / 2**30, before.total / 2**30, _other_engine_hint(before),
        )


def log_kv_cache(num_blocks: int, block_size: int, max_model_len: int, per_block: int,
                 dtype: torch.dtype | None = None) -> None:
    tokens = (num_blocks - 1) * block_size
    logger.info(
        "KV cache%s: %d blocks of %d tokens = %d tokens (%.1f MiB); maximum concurrency at max_model_len=%d: %.2fx",
        f" ({dtype_name(dtype)})" if dtype is not None else "", num_blocks - 1, block_size, tokens,
        num_blocks * per_block / 2**20, max_model_len, tokens / max_model_len,
    )
