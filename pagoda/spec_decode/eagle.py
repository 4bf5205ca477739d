"""EAGLE / EAGLE-3 proposer: a small head reads the target's hidden states and drafts ``k`` tokens greedily.

Draft entries. The head's entry at position ``p`` is ``(token p + 1, target hidden state at p)``: the
target's last-layer output (EAGLE) or its three aux residual streams (EAGLE-3), which the model runner
hands over for every position a step computed and kept (:class:`SpecHidden`; rows of rejected proposals
are dropped). After every target step one head forward runs over the new entries of all its requests
(prompt chunks included, as vLLM does), so a request with ``L`` tokens has entries up to ``L - 2``; the
last one's greedy token is the first proposal, and each further proposal feeds back ``(previous
proposal, the head's own output hidden state)`` at the next position. Only entries built from target
states count as computed; the fed-back ones are rewritten next round.

KV cache. The head's K/V lives in its own small paged cache (one layer per head layer, the target's
block size, model dtype; at most 512 MiB), with a per-request block list from a free list: it never takes blocks from
the target's cache or its prefix-cache accounting, and the target's CUDA graphs are unchanged. A
request's entries start at ``offset``, the first position whose target state arrived: after a
prefix-cache hit the head sees the uncached suffix only (positions keep their rotary angle), which can
lower acceptance but never changes outputs. A gap in the arriving positions (preemption and recompute)
restarts the request's entries. A request that finds no free draft block proposes nothing that round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.core.request import Request
from pagoda.layers.sampler import to_device
from pagoda.spec_decode.config import SpeculativeConfig
from pagoda.spec_decode.eagle_head import EagleHead, build_head, eagle3_aux_layers, read_head_config

logger = logging.getLogger("pagoda")

# The target sized its cache first; the head's cache takes at most this (or what full concurrency at
# max_model_len needs, if less).
_DRAFT_KV_BYTES = 512 << 20


@dataclass
class SpecHidden:
    """A step's target hidden states for the proposer: ``rows`` [T, H'] in the step's row order;
    ``req_ids`` / ``query_start_loc`` / ``starts`` (first position of each request's rows) as in
    :class:`~pagoda.worker.input_batch.StepInputs`."""

    rows: torch.Tensor
    req_ids: list[str]
    query_start_loc: list[int]
    starts: list[int]


@dataclass
class _Entries:
    """One request's draft entries: positions ``[offset, offset + done)`` are in the head's cache, all built
    from target states; ``first`` / ``h_last``: the head's greedy token and output hidden state at the last
    of them (the first proposal, and the hidden input of the second)."""

    offset: int
    done: int = 0
    blocks: list[int] = field(default_factory=list)
    first: int = -1
    h_last: torch.Tensor | None = None

    @property
    def next_pos(self) -> int:
        return self.offset + self.done


def check_target(model: Any, method: str) -> None:
    from pagoda.models.llama import LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM) or type(model).forward is not LlamaForCausalLM.forward:
        raise ValueError(f"speculative_config.method: {method} heads need a Llama-family target (Llama, Mistral, "
                         f"Qwen2/3); this target is {type(model).__name__}.")


class EagleProposer:
    def __init__(self, spec: SpeculativeConfig, engine_cfg: Any, runner: Any) -> None:
        assert spec.model is not None  # SpeculativeConfig requires it
        target = runner.model
        check_target(target, spec.method)
        self.k = spec.num_speculative_tokens
        if spec.method == "eagle3":
            target.aux_hidden_layers = eagle3_aux_layers(read_head_config(spec.model), target.num_layers)
        self.head: EagleHead = build_head(spec.model, spec.method, target, engine_cfg.max_model_len,
                                          engine_cfg.dtype, engine_cfg.device)
        runner.spec_hidden = "aux" if spec.method == "eagle3" else "last"
        self.backend = runner.backend
        self.device = engine_cfg.device
        self.block_size = engine_cfg.block_size
        hs = self.head.shape
        self.num_blocks = self._num_blocks(engine_cfg, hs.num_kv_heads * hs.head_dim * self.head.num_layers)
        from pagoda.worker.kv_cache import allocate_kv_caches

        self.kv_caches = allocate_kv_caches(self.head.num_layers, self.num_blocks, self.block_size, hs.num_kv_heads,
                                            hs.head_dim, engine_cfg.dtype, self.device,
                                            getattr(self.backend, "kv_layout", "NHD"))
        self.free_blocks = list(range(self.num_blocks - 1, -1, -1))
        self.entries: dict[str, _Entries] = {}
        self.split_kv_len = engine_cfg.max_model_len
        logger.info("%s head %s: %d draft KV blocks", spec.method.upper(), spec.model, self.num_blocks)

    def _num_blocks(self, cfg: Any, kv_width: int) -> int:
        per_block = 2 * kv_width * self.block_size * torch.tensor([], dtype=cfg.dtype).element_size()
        full = cfg.max_num_seqs * (-(-(cfg.max_model_len + self.k) // self.block_size)) + 1
        return int(max(2, min(full, _DRAFT_KV_BYTES // per_block)))

    # ------------------------------------------------------------ state
    def retain(self, request_ids: set[str]) -> None:
        """Free the entries of requests no longer running."""
        for rid in [r for r in self.entries if r not in request_ids]:
            self._drop(rid)

    def _drop(self, rid: str) -> None:
        e = self.entries.pop(rid)
        self.free_blocks.extend(reversed(e.blocks))

    @torch.inference_mode()
    def observe(self, hidden: SpecHidden | None, reqs: dict[str, Request]) -> None:
        """Run the head over the entries the last step's kept target rows make (positions each running request
        computed and kept, ``< num_computed_tokens``): one forward for the whole step, prompt chunks included."""
        if hidden is None:
            return
        live: list[tuple[Request, _Entries, int, int]] = []  # (request, entries, first row, count)
        for i, rid in enumerate(hidden.req_ids):
            r = reqs.get(rid)
            if r is None:
                continue
            start, row0 = hidden.starts[i], hidden.query_start_loc[i]
            n = min(hidden.query_start_loc[i + 1] - row0, r.num_computed_tokens - start)
            if n <= 0:
                continue
            e = self.entries.get(rid)
            if e is not None and e.next_pos != start:  # a gap or a recompute: start over
                self._drop(rid)
                e = None
            if e is None:
                e = self.entries[rid] = _Entries(start)
            if not self._grow(e, start + n - e.offset):
                self._drop(rid)  # no draft block: this request's entries restart later
                continue
            live.append((r, e, row0, n))
        if not live:
            return
        ids = [t for r, e, _, n in live for t in r.all_token_ids[e.next_pos + 1 : e.next_pos + 1 + n]]
        pos = [p for _, e, _, n in live for p in range(e.next_pos, e.next_pos + n)]
        rows = torch.cat([hidden.rows[row0 : row0 + n] for _, _, row0, n in live])
        counts = [n for *_, n in live]
        o, h = self._run([e for _, e, _, _ in live], ids, pos, counts, self.head.combine(rows))
        ends = to_device(counts, self.device).cumsum(0) - 1
        toks = self.head.greedy(o[ends]).tolist()
        h_last = h[ends]  # a copy: the step's rows are not kept alive
        for j, (_, e, _, n) in enumerate(live):
            e.done += n
            e.first, e.h_last = toks[j], h_last[j]

    def _grow(self, e: _Entries, num_entries: int) -> bool:
        need = -(-num_entries // self.block_size) - len(e.blocks)
        if need > len(self.free_blocks):
            return False
        e.blocks.extend(self.free_blocks.pop() for _ in range(max(0, need)))
        return True

    # ------------------------------------------------------------ drafting
    @torch.inference_mode()
    def propose(self, reqs: list[Request], ks: list[int]) -> list[list[int]]:
        """Proposal 1 comes from :meth:`observe`; proposals 2..k feed back (proposal, head output) one
        position further each (not committed: rewritten by the next round's entries)."""
        out: list[list[int]] = [[] for _ in reqs]
        live: list[int] = []
        for i, (r, k) in enumerate(zip(reqs, ks, strict=True)):
            e = self.entries.get(r.request_id)
            last = r.num_tokens - 1  # the newest token's position; entries up to last - 1 come from the target
            if e is None or e.h_last is None or e.next_pos != last or not self._grow(e, last + k - 1 - e.offset):
                continue
            live.append(i)
            out[i].append(e.first)
        if not live:
            return out
        ents = [self.entries[reqs[i].request_id] for i in live]
        h = torch.stack([e.h_last for e in ents])  # type: ignore[misc]
        for step in range(1, max(ks[i] for i in live)):
            sel = [j for j, i in enumerate(live) if ks[i] > step]
            if not sel:
                break
            act = [live[j] for j in sel]
            idx = to_device(sel, self.device)
            pos = [reqs[i].num_tokens - 2 + step for i in act]
            o, h2 = self._run([ents[j] for j in sel], [out[i][-1] for i in act], pos, [1] * len(act), h[idx])
            for i, t in zip(act, self.head.greedy(o).tolist(), strict=True):
                out[i].append(t)
            h = h.index_copy(0, idx, h2.to(h.dtype))
        return out

    def _run(self, ents: list[_Entries], ids: list[int], pos: list[int], rows: list[int],
             hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One head forward: ``rows[j]`` consecutive entries of ``ents[j]`` at the next ``rows[j]`` of ``pos``."""
        bs, dev = self.block_size, self.device
        slots, seq_lens, tables, qsl = [], [], [], [0]
        at = 0
        for e, n in zip(ents, rows, strict=True):
            for p in pos[at : at + n]:
                x = p - e.offset
                slots.append(e.blocks[x // bs] * bs + x % bs)
            seq_lens.append(pos[at + n - 1] - e.offset + 1)
            tables.append(e.blocks)
            at += n
            qsl.append(at)
        width = max(-(-s // bs) for s in seq_lens)
        bt = [t[:width] + [0] * (width - len(t[:width])) for t in tables]
        meta = AttentionMetadata(
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(bt, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            max_query_len=max(rows), max_seq_len=max(seq_lens), query_lens_cpu=list(rows),
            seq_lens_cpu=seq_lens, is_decode_only=max(rows) == 1, split_kv_len=self.split_kv_len,
        )
        return self.head(torch.tensor(ids, dtype=torch.long, device=dev), hidden,
                         torch.tensor(pos, dtype=torch.long, device=dev), self.kv_caches, meta, self.backend)
