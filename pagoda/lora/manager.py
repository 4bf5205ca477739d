"""The engine's adapters: checked and loaded when a request names them, placed in device slots per step.

* :meth:`LoRAManager.add_adapter` (the engine core, when a request is added): the adapter is read and checked
  (:mod:`pagoda.lora.peft`) unless it is in the host cache; a bad one raises ``ValueError`` and fails that request
  only. The host cache keeps ``max_cpu_loras`` adapters, least recently used dropped first, but never one that a
  request the engine holds still uses (:attr:`LoRAManager.in_use`; the cache may then hold more for a while), so a
  live request's adapter is not read again mid-run; a dropped one is read again when a new request names it (or
  after ``remove_adapter``, when a step needs it).
* ``lora_int_id`` names one adapter for the engine's life (the prefix cache keys blocks by the id): the same id with
  another ``lora_path`` is refused, and so is the id once its files changed on disk (:class:`_Files`: a request
  naming it, or a step reading it again after the host cache dropped it, fails with the error), so that no
  request runs with, or reuses KV blocks of, weights other than those first loaded under the id.
* :meth:`LoRAManager.set_batch` (the model runner, once per step): the step's adapters (at most ``max_loras``: the
  scheduler's invariant) get device slots, a slot holding none of them taken over least recently used first, and
  each row's slot goes to the hooks' row mask (:class:`~pagoda.lora.layers.LoRABatch`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pagoda.lora.config import LoRAConfig
from pagoda.lora.layers import LoRABatch, LoRASlots
from pagoda.lora.peft import LoRAWeights, ModelShape, load_adapter
from pagoda.lora.request import LoRARequest

logger = logging.getLogger("pagoda")


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def _stats(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of the adapter files in ``folder`` now (empty when there are none)."""
    out = []
    for name in _FILES:
        try:
            st = (folder / name).stat()
        except OSError:
            continue
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _digest(folder: Path) -> str:
    """sha256 of the adapter files' names and bytes."""
    h = hashlib.sha256()
    for name in _FILES:
        path = folder / name
        if path.is_file():
            h.update(name.encode() + b"\x00")
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


@dataclass
class _Files:
    """The adapter files as first loaded under an id: their stats (the cheap check) and their digest (read only
    when the stats differ, e.g. a file touched or copied back unchanged)."""

    stats: tuple[tuple[str, int, int], ...]
    digest: str

    @classmethod
    def of(cls, folder: Path) -> _Files:
        return cls(_stats(folder), _digest(folder))

    def changed(self, folder: Path) -> bool:
        """Whether ``folder`` now holds other adapter files. A folder without them (deleted since) is not a change:
        the loaded copy stays usable, and a read of the folder says it is gone."""
        now = _stats(folder)
        if now == self.stats or not now:
            return False
        if _digest(folder) != self.digest:
            return True
        self.stats = now  # the same bytes: the cheap check passes from now on
        return False


class LoRAManager:
    def __init__(self, model: Any, cfg: LoRAConfig, device: torch.device, max_rows: int) -> None:
        """Attach slot buffers and hooks to every target linear of ``model`` (a native Llama-family model); a step
        has at most ``max_rows`` token rows (a CUDA graph's padded bucket included)."""
        self.cfg = cfg
        self.device = device
        self.batch = LoRABatch(max_rows, cfg.max_loras, cfg.dtype, device)
        s = model.shape
        q, kv, inter, hid = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.intermediate_size, s.hidden_size
        self.shape = ModelShape(s.num_layers, {"q_proj": (hid, q), "k_proj": (hid, kv), "v_proj": (hid, kv),
                                               "o_proj": (q, hid), "gate_proj": (hid, inter), "up_proj": (hid, inter),
                                               "down_proj": (inter, hid)})
        targets = (("self_attn", "qkv_proj", ("q_proj", "k_proj", "v_proj")), ("self_attn", "o_proj", ("o_proj",)),
                   ("mlp", "gate_up_proj", ("gate_proj", "up_proj")), ("mlp", "down_proj", ("down_proj",)))
        self.layers: list[list[LoRASlots]] = []
        for layer in model.layers:
            slots = []
            for parent, attr, names in targets:
                module = getattr(getattr(layer, parent), attr)
                dims = [self.shape.dims[n] for n in names]
                ls = LoRASlots(names, dims[0][0], tuple(d[1] for d in dims), cfg.max_loras, cfg.max_lora_rank,
                               cfg.dtype, device, self.batch)
                module.register_forward_hook(ls)
                slots.append(ls)
            self.layers.append(slots)
        self._cpu: OrderedDict[int, LoRAWeights] = OrderedDict()  # the host cache, least recently used first
        self._known: dict[int, LoRARequest] = {}  # id -> the request that first loaded it (its folder)
        self._files: dict[int, _Files] = {}  # id -> its files as first loaded
        self._slot_ids: list[int | None] = [None] * cfg.max_loras
        self._slot_used: list[int] = [0] * cfg.max_loras  # step number of each slot's last use
        self._step = 0
        self.in_use: Callable[[], set[int]] = set
        """Ids of the adapters live requests use (set by the engine core): the host cache keeps them even past
        ``max_cpu_loras``, so a running or waiting request's adapter is never read from its folder again."""
        nbytes = sum(ls.nbytes for slots in self.layers for ls in slots)
        logger.info("LoRA: %d adapter slots of rank %d (%.1f MiB of %s memory, %s), %d kept loaded in host memory",
                    cfg.max_loras, cfg.max_lora_rank, nbytes / 2**20, device.type, str(cfg.dtype).replace("torch.", ""),
                    cfg.max_cpu_loras)

    # ------------------------------------------------------------ adapters
    def add_adapter(self, req: LoRARequest) -> None:
        """Check and load ``req``'s adapter unless it is cached (then mark it recently used). Raises ``ValueError``
        naming the adapter and the problem."""
        known = self._known.get(req.lora_int_id)
        if known is not None and _real(known.lora_path) != _real(req.lora_path):
            raise ValueError(f"LoRA adapter {req.lora_name!r}: lora_int_id {req.lora_int_id} already names adapter "
                             f"{known.lora_name!r} from {known.lora_path}; one id names one adapter for the engine's "
                             f"life (its prefix-cache entries are keyed by the id): give this adapter its own "
                             f"lora_int_id.")
        if known is not None:
            self._check_unchanged(req)
        if req.lora_int_id in self._cpu:
            self._cpu.move_to_end(req.lora_int_id)
            return
        self._load(req)

    def _check_unchanged(self, req: LoRARequest) -> None:
        """Raise ``ValueError`` when the files of a known id changed on disk since they were first loaded."""
        files = self._files.get(req.lora_int_id)
        if files is not None and files.changed(Path(req.lora_path).expanduser()):
            raise ValueError(f"LoRA adapter {req.lora_name!r} (lora_int_id {req.lora_int_id}, {req.lora_path}): its "
                             f"files changed on disk since lora_int_id {req.lora_int_id} was loaded; one id names one "
                             f"adapter for the engine's life (requests under it and its prefix-cache entries use the "
                             f"weights first loaded): give the new weights a new lora_int_id (the server: load them "
                             f"under a new name, or again with load_inplace=True).")

    def _load(self, req: LoRARequest) -> LoRAWeights:
        """Read and check ``req``'s folder into the host cache; a first load records its files."""
        folder = Path(req.lora_path).expanduser()
        files = _Files.of(folder) if req.lora_int_id not in self._files else None
        w = self._cache(load_adapter(req, self.shape, self.cfg.max_lora_rank, self.cfg.dtype))
        if files is not None:
            self._files[req.lora_int_id] = files
        return w

    def _cache(self, w: LoRAWeights) -> LoRAWeights:
        rid = w.request.lora_int_id
        if rid not in self._known:
            self._known[rid] = w.request
            logger.info("LoRA: loaded adapter %r (lora_int_id %d, %d modules, %.1f MiB) from %s", w.request.lora_name,
                        rid, len(w.modules), w.nbytes / 2**20, w.request.lora_path)
        self._cpu[rid] = w
        self._cpu.move_to_end(rid)
        self.trim(keep=rid)
        return w

    def trim(self, keep: int | None = None) -> None:
        """Drop host copies over ``max_cpu_loras``, least recently used first, but never ``keep`` nor one a live
        request still needs (:attr:`in_use`). The engine core calls it after every step, so the bound holds again
        once the requests that needed more have finished."""
        over = len(self._cpu) - self.cfg.max_cpu_loras
        if over > 0:
            live = self.in_use()
            for old in [i for i in self._cpu if i != keep and i not in live][:over]:
                del self._cpu[old]

    def _weights(self, adapter_id: int) -> LoRAWeights:
        w = self._cpu.get(adapter_id)
        if w is not None:
            self._cpu.move_to_end(adapter_id)
            return w
        req = self._known.get(adapter_id)
        if req is None:
            raise RuntimeError(f"a step names LoRA adapter id {adapter_id}, which no request added")
        self._check_unchanged(req)  # read again: it must be what the id was first loaded with
        return self._load(req)

    def loaded_ids(self) -> list[int]:
        """Ids of the adapters in the host cache, least recently used first."""
        return list(self._cpu)

    def remove_adapter(self, adapter_id: int) -> bool:
        """vLLM's ``remove_lora``: drop the adapter from the host cache (True if it was there). The id keeps naming
        its folder (the prefix-cache invariant), so a request still running with it reads it again if a step
        needs it."""
        return self._cpu.pop(adapter_id, None) is not None

    def name_of(self, adapter_id: int) -> str:
        """The ``lora_name`` the adapter was first added under (the metrics' label)."""
        req = self._known.get(adapter_id)
        return req.lora_name if req is not None else str(adapter_id)

    # ------------------------------------------------------------- a step
    def set_batch(self, adapter_ids: list[int | None], query_lens: list[int]) -> None:
        """The step's adapters into slots and each row's slot into the hooks' mask: request ``i`` owns the next
        ``query_lens[i]`` rows and runs with ``adapter_ids[i]`` (None: the base model)."""
        self._step += 1
        step_ids = {aid: True for aid in adapter_ids if aid is not None}
        if len(step_ids) > self.cfg.max_loras:
            raise RuntimeError(f"a step uses {len(step_ids)} LoRA adapters, over max_loras {self.cfg.max_loras}")
        slot_of = {aid: self._slot_for(aid, step_ids) for aid in step_ids}
        rows: list[int] = []
        for aid, n in zip(adapter_ids, query_lens, strict=True):
            rows.extend([-1 if aid is None else slot_of[aid]] * n)
        self.batch.set_rows(rows)

    def _slot_for(self, adapter_id: int, step_ids: dict[int, bool]) -> int:
        """A device slot holding ``adapter_id``: its own, else a free one, else the least recently used one that
        holds no adapter of this step (written now)."""
        ids = self._slot_ids
        if adapter_id in ids:
            slot = ids.index(adapter_id)
        else:
            free = [i for i, a in enumerate(ids) if a is None or a not in step_ids]
            slot = min(free, key=lambda i: (ids[i] is not None, self._slot_used[i]))
            w = self._weights(adapter_id)
            for layer_idx, slots in enumerate(self.layers):
                for ls in slots:
                    ls.set_slot(slot, {n: w.modules[(layer_idx, n)] for n in ls.names if (layer_idx, n) in w.modules})
            ids[slot] = adapter_id
        self._slot_used[slot] = self._step
        return slot
