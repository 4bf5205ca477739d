"""PyTorch paged attention (the CPU backend, and the fallback everywhere).

Layout: this backend keeps each layer's cache as ``[num_blocks, num_kv_heads,
block_size, head_dim]`` (``kv_layout = "HND"``), unlike the Triton backend's
``[num_blocks, block_size, num_kv_heads, head_dim]``. Viewing the cache as
``[num_blocks * num_kv_heads, block_size, head_dim]``, one ``index_select`` with indices
``block * num_kv_heads + head`` gathers a request's K (or V) directly as
``[B, num_kv_heads, context, head_dim]``: the layout the attention matmuls want, with no
permute copy. (With the other layout, gather + permute + strided matmuls took about 3×
as long at batch 32 on the CPU.)

Decode rows (one query token) are batched into one SDPA call: each KV head's group of query
heads is that call's query rows (K/V never repeated), with a length mask. On the 2-core CPU
(bf16, 9 heads / 3 KV heads of 64, loaded VM) this took 52 us against 394 us for the former
two matmuls + float softmax at batch 1 (context 100), and 1.1 ms against 2.2 ms at batch 32.
Prefill chunks are attended one request at a time with SDPA and a causal mask offset by the request's cached length;
a request's 2..``decode_like_rows`` rows (a speculative verify: 16, or k + 1 when the engine speculates k tokens)
go through one decode-like SDPA call instead, whose rows are bitwise what decode steps give (so greedy outputs do
not depend on speculation).

An FP8 cache (``--kv-cache-dtype fp8``) is gathered as bytes and upcast to the query dtype per
step (exact: every FP8 value is representable in bf16/fp16/fp32); ``k_scale`` is folded into the
softmax scale and ``v_scale`` multiplies the output, the same arithmetic as scaling K and V.

Where the native kernel builds (:mod:`pagoda.attention.cpu_decode_native`: bf16/float32 caches of the query's
dtype, no soft-cap), decode rows and requests of at most ``decode_like_rows`` rows go to it instead
(:meth:`TorchAttentionBackend._forward_native`): it reads the paged cache in place and computes each row the same
way whatever the step holds; the SDPA paths below stay for the rest and behind ``cpu_decode_native.ENABLED``.

A layer's sliding window is one more mask term (keys at positions ``<= p - W`` hidden; the cache
still holds them); a logit soft-cap (``c * tanh(s / c)``, Gemma 2) makes prefill compute its scores
explicitly, as SDPA has no soft-cap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagoda.attention import cpu_decode_native
from pagoda.attention.backend import AttentionBackend, register_backend
from pagoda.attention.kv_quant import is_fp8, quantize, raw
from pagoda.attention.metadata import AttentionMetadata


def gather_index(block_ids: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Rows ``block * Hkv + head`` of the ``[N * Hkv, bs, D]`` cache view, in ``[B, Hkv, nb]`` order (flat)."""
    heads = torch.arange(num_kv_heads, device=block_ids.device, dtype=torch.long)
    return (block_ids.long().unsqueeze(1) * num_kv_heads + heads.view(1, num_kv_heads, 1)).reshape(-1)


def gather_heads(cache: torch.Tensor, block_ids: torch.Tensor, dtype: torch.dtype | None = None,
                 idx: torch.Tensor | None = None) -> torch.Tensor:
    """cache [N, Hkv, bs, D], block_ids [B, nb] -> [B, Hkv, nb*bs, D] (contiguous); an FP8 cache is
    gathered as bytes and upcast to ``dtype`` (unscaled). ``idx``: :func:`gather_index` of ``block_ids``, when the
    caller already has it."""
    N, Hkv, bs, D = cache.shape
    B, nb = block_ids.shape
    if idx is None:
        idx = gather_index(block_ids, Hkv)
    if not is_fp8(cache.dtype):
        return cache.view(N * Hkv, bs, D).index_select(0, idx).view(B, Hkv, nb * bs, D)
    rows = raw(cache).view(N * Hkv, bs, D).index_select(0, idx).view(cache.dtype)
    return rows.to(dtype or torch.float32).view(B, Hkv, nb * bs, D)


class TorchAttentionBackend(AttentionBackend):
    name = "torch"
    kv_layout = "HND"
    batch_invariant = False  # set by the model runner in --deterministic mode (attention/deterministic.py)
    step_memo = False  # set by the CPU model runner (eager steps, fresh metadata tensors each step): _step_memo
    decode_like_rows = 16
    """A request's query rows up to which a step attends them as decode rows (bitwise what decode steps give); above,
    a causal SDPA over the chunk. The model runner raises it to a verify's k + 1 rows when the engine speculates k
    tokens: a verify of more rows than this would take other bits than decoding, and greedy tokens could change."""

    def __init__(self) -> None:
        self._memos: dict[str, tuple[torch.Tensor, dict[tuple, object]]] = {}

    def _step_memo(self, kind: str, anchor: torch.Tensor) -> dict[tuple, object] | None:
        """Values every layer of a step recomputes alike (write rows, gather rows, the decode mask), kept while
        ``anchor`` (a metadata tensor of the step, built anew each step and never written in place) is the same
        object; the memo holds the anchor, so a later step's tensor cannot reuse its identity. Only when
        ``step_memo`` is set (the CPU engine, which captures no graphs: a graph, or a CPU stand-in for one, replays
        static buffers whose contents change under the same object)."""
        if not self.step_memo or anchor.device.type != "cpu":
            return None
        held = self._memos.get(kind)
        if held is None or held[0] is not anchor:
            held = self._memos[kind] = (anchor, {})
        return held[1]

    def _write_rows(self, slot_mapping: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """CPU: (kept token rows, or None for all, and their flat rows ``(block * Hkv + head) * bs + offset`` of
        the ``[N * Hkv * bs, D]`` cache view, in ``[T, Hkv]`` order), once per step."""
        memo = self._step_memo("write", slot_mapping)
        key = tuple(cache.shape[1:])
        if memo is not None and key in memo:
            return memo[key]  # type: ignore[return-value]
        _, hkv, bs, _ = cache.shape
        keep = None
        if bool((slot_mapping < 0).any()):
            keep = slot_mapping >= 0
            slot_mapping = slot_mapping[keep]
        blk = torch.div(slot_mapping, bs, rounding_mode="floor")
        off = slot_mapping - blk * bs
        heads = torch.arange(hkv, device=slot_mapping.device)
        rows = ((blk.unsqueeze(1) * hkv + heads.unsqueeze(0)) * bs + off.unsqueeze(1)).reshape(-1)
        if memo is not None:
            memo[key] = (keep, rows)
        return keep, rows

    def write_kv(self, key, value, k_cache, v_cache, slot_mapping, k_scale=1.0, v_scale=1.0):
        k_new, v_new = quantize(key, k_scale, k_cache.dtype), quantize(value, v_scale, v_cache.dtype)
        if slot_mapping.device.type == "cpu":  # one row copy per token and head (slots are distinct)
            keep, rows = self._write_rows(slot_mapping, k_cache)
            if keep is not None:
                k_new, v_new = k_new[keep], v_new[keep]
            d = k_cache.shape[-1]
            raw(k_cache).view(-1, d).index_copy_(0, rows, raw(k_new).reshape(-1, d))
            raw(v_cache).view(-1, d).index_copy_(0, rows, raw(v_new).reshape(-1, d))
            return
        bs = k_cache.shape[2]
        blk = torch.div(slot_mapping, bs, rounding_mode="floor")
        off = slot_mapping - blk * bs
        # [T, Hkv, D] into (block, :, offset); FP8 scattered as bytes
        raw(k_cache)[blk, :, off] = raw(k_new)
        raw(v_cache)[blk, :, off] = raw(v_new)

    def forward(self, query, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                k_scale: float = 1.0, v_scale: float = 1.0, sliding_window: int | None = None,
                logits_soft_cap: float | None = None) -> torch.Tensor:
        win, cap = sliding_window, logits_soft_cap
        if not is_fp8(k_cache.dtype):
            return self._forward(query, k_cache, v_cache, meta, scale, win, cap)
        out = self._forward(query, k_cache, v_cache, meta, scale * k_scale, win, cap)
        return out if v_scale == 1.0 else out.mul_(v_scale)

    def _forward(self, query, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                 win: int | None, cap: float | None) -> torch.Tensor:
        if self.batch_invariant:  # --deterministic
            from pagoda.attention import deterministic

            return deterministic.attention(query, k_cache, v_cache, meta, scale, win, cap)
        if cpu_decode_native.eligible(query, k_cache, cap):
            return self._forward_native(query, k_cache, v_cache, meta, scale, win)
        if meta.is_decode_only:
            return self._decode(query, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, win, cap)
        out = torch.empty_like(query)
        q_lens, s_lens = meta.query_lens_cpu, meta.seq_lens_cpu
        starts = [0]
        for q in q_lens:
            starts.append(starts[-1] + q)
        decode_idx = [i for i, q in enumerate(q_lens) if q == 1]
        if decode_idx:
            rows = torch.tensor([starts[i] for i in decode_idx], device=query.device)
            idx = torch.tensor(decode_idx, device=query.device)
            o = self._decode(query[rows], k_cache, v_cache, meta.block_tables[idx], meta.seq_lens[idx], scale,
                             win, cap, memoize=False)
            out[rows] = o
        bs = k_cache.shape[2]
        for i, (q_len, s_len) in enumerate(zip(q_lens, s_lens, strict=True)):
            if q_len == 1:
                continue
            nb = -(-s_len // bs)
            blocks = meta.block_tables[i : i + 1, :nb]
            if q_len <= self.decode_like_rows and cap is None:  # a speculative verify: rows as decode rows
                memo = self._step_memo("verify", meta.block_tables)
                out[starts[i] : starts[i] + q_len] = self._decode_like(query[starts[i] : starts[i] + q_len], k_cache,
                                                                       v_cache, blocks, s_len, scale, win,
                                                                       memo, i)
                continue
            out[starts[i] : starts[i] + q_len] = _prefill_request(query[starts[i] : starts[i] + q_len], k_cache,
                                                                  v_cache, blocks, s_len, scale, win, cap)
        return out

    def _forward_native(self, query, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                        win: int | None) -> torch.Tensor:
        """The step's decode rows and requests of at most ``decode_like_rows`` rows by the native kernel
        (:mod:`pagoda.attention.cpu_decode_native`: the paged cache read in place, each row as a decode step computes
        it), longer requests by :func:`_prefill_request`."""
        memo = self._step_memo("native", meta.block_tables)
        sel = memo.get(("rows",)) if memo is not None else None
        if not isinstance(sel, cpu_decode_native.DecodeRows):
            sel = cpu_decode_native.decode_rows(meta, self.decode_like_rows)
            if memo is not None:
                memo[("rows",)] = sel
        if len(sel.rows) == query.shape[0]:
            return cpu_decode_native.attention(query, k_cache, v_cache, meta.block_tables, sel, scale, win)
        out = torch.empty_like(query)
        if len(sel.rows):
            out[sel.rows] = cpu_decode_native.attention(query[sel.rows], k_cache, v_cache, meta.block_tables, sel,
                                                        scale, win)
        bs = k_cache.shape[2]
        start = 0
        for i, (q_len, s_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu, strict=True)):
            if q_len > self.decode_like_rows:
                blocks = meta.block_tables[i : i + 1, : -(-s_len // bs)]
                out[start : start + q_len] = _prefill_request(query[start : start + q_len], k_cache, v_cache, blocks,
                                                              s_len, scale, win, None)
            start += q_len
        return out

    def _decode_inputs(self, block_tables, seq_lens, hkv: int, length: int, window: int | None,
                       dtype: torch.dtype, memoize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gather rows, the bool keep mask [B, L], SDPA's additive mask [B, 1, 1, L] in ``dtype``: 0 kept, -inf
        hidden, exactly what SDPA makes of the bool mask itself), once per step and window."""
        memo = self._step_memo("decode", block_tables) if memoize else None
        key = (hkv, length, window, dtype)
        held = memo.get(key) if memo is not None else None
        if held is not None and held[0] is seq_lens:  # type: ignore[index]  # (seq_lens, result)
            return held[1]  # type: ignore[index]
        keep, additive = _length_masks(seq_lens, length, window, dtype)
        out = (gather_index(block_tables, hkv), keep, additive.view(keep.shape[0], 1, 1, length))
        if memo is not None:
            memo[key] = (seq_lens, out)
        return out

    def _decode(self, query, k_cache, v_cache, block_tables, seq_lens, scale, window=None, cap=None,
                memoize: bool = True):
        """query [B, H, D]; every request has exactly one new token. ``memoize``: block_tables is the step's own
        tensor (not a per-call slice), so the rows and mask may be kept for the step's other layers."""
        B, H, D = query.shape
        Hkv = k_cache.shape[1]
        G = H // Hkv
        L = block_tables.shape[1] * k_cache.shape[2]
        idx, keep, additive = self._decode_inputs(block_tables, seq_lens, Hkv, L, window, query.dtype, memoize)
        k = gather_heads(k_cache, block_tables, query.dtype, idx)  # [B, Hkv, L, D]
        v = gather_heads(v_cache, block_tables, query.dtype, idx)
        q = query.view(B, Hkv, G, D)  # a KV head's G query heads act as G query rows of one SDPA call
        if cap is None:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=additive, scale=scale)
            return o.reshape(B, H, D)  # [B, Hkv, G, D] -> [B, H, D]
        scores = torch.matmul(q, k.transpose(2, 3)).float() * scale  # [B, Hkv, G, L]; SDPA has no soft-cap
        scores = torch.tanh(scores / cap) * cap
        scores.masked_fill_(~keep.view(B, 1, 1, L), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        return torch.matmul(probs, v).reshape(B, H, D)

    def _decode_like(self, query, k_cache, v_cache, blocks, s_len: int, scale: float,
                     window: int | None, memo: dict[tuple, object] | None = None, req: int = 0) -> torch.Tensor:
        """One request's few query rows [Q, H, D] (the last Q of ``s_len`` positions: a speculative verify), each
        computed as a decode step of that position alone computes it (:meth:`_decode` with one request: its query
        heads as ``G`` query rows, keys up to the blocks its position needs, the same length mask), so greedy tokens
        do not depend on whether they were speculated (tests/test_attention_verify_rows.py). K/V are gathered once
        and each row reads a prefix view of them, in its own SDPA call: the CPU SDPA's arithmetic depends on a call's
        query rows, its batch and its key length, masked keys included (on an AVX-512-BF16 AMD EPYC a row computed
        among 12 query rows, or as one of several batch items, or with 208 keys instead of 192, gets other bits).
        Measured cost there: the default model's CPU n-gram speed-up 1.41x (outputs not identical) -> 1.14x.

        ``memo`` (the step's, :meth:`_step_memo`; ``req``: the request's index in the step): the gather rows and the
        rows' masks, which every layer of the step computes alike, are made once per step."""
        q_len, H, D = query.shape
        hkv, bs = k_cache.shape[1], k_cache.shape[2]
        key = (req, s_len, q_len, hkv, bs, window, query.dtype)
        held = memo.get(key) if memo is not None else None
        if held is None:
            masks: list[torch.Tensor] = []
            for t in range(q_len):
                pos_len = s_len - q_len + 1 + t
                length = -(-pos_len // bs) * bs
                lengths = torch.tensor([pos_len], dtype=torch.int32, device=query.device)
                masks.append(_length_masks(lengths, length, window, query.dtype)[1].view(1, 1, 1, length))
            held = (gather_index(blocks, hkv), masks)
            if memo is not None:
                memo[key] = held
        idx: torch.Tensor = held[0]  # type: ignore[index]
        masks = held[1]  # type: ignore[index]
        k = gather_heads(k_cache, blocks, query.dtype, idx)  # [1, Hkv, L, D]
        v = gather_heads(v_cache, blocks, query.dtype, idx)
        outs = []
        for t, additive in enumerate(masks):
            length = additive.shape[-1]
            q = query[t : t + 1].view(1, hkv, H // hkv, D)
            o = F.scaled_dot_product_attention(q, k[:, :, :length], v[:, :, :length], attn_mask=additive, scale=scale)
            outs.append(o.reshape(1, H, D))
        return torch.cat(outs)


def _length_masks(lengths: torch.Tensor, length: int, window: int | None, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """For query rows that see their first ``lengths[b]`` keys (the last ``window`` of them with a window): the bool
    keep mask [B, length] and SDPA's additive mask [B, length] in ``dtype`` (0 kept, -inf hidden: exactly what
    SDPA makes of the bool mask itself)."""
    kpos = torch.arange(length, device=lengths.device)[None, :]
    keep = kpos < lengths[:, None]
    if window is not None:
        keep &= kpos > lengths[:, None] - 1 - window
    zero = torch.zeros((), dtype=dtype, device=keep.device)
    return keep, torch.where(keep, zero, torch.full((), float("-inf"), dtype=dtype, device=keep.device))


def _prefill_request(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, blocks: torch.Tensor,
                     s_len: int, scale: float, window: int | None, cap: float | None) -> torch.Tensor:
    """One request's chunk ``query`` [Q, H, D] (its last Q of ``s_len`` positions) over its ``blocks`` [1, nb]: K/V
    gathered, then :func:`_prefill`."""
    k = gather_heads(k_cache, blocks, query.dtype)[:, :, :s_len]
    v = gather_heads(v_cache, blocks, query.dtype)[:, :, :s_len]
    return _prefill(query.transpose(0, 1).unsqueeze(0), k, v, scale, window, cap)[0].transpose(0, 1)


def _prefill(q, k, v, scale: float, window: int | None, cap: float | None) -> torch.Tensor:
    """One request's chunk: q [1, H, Q, D] at the last Q of S positions, k/v [1, Hkv, S, D]."""
    q_len, s_len = q.shape[2], k.shape[2]
    if q_len == s_len and window is None and cap is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    qpos = torch.arange(q_len, device=q.device) + (s_len - q_len)
    kpos = torch.arange(s_len, device=q.device)[None, :]
    mask = kpos <= qpos[:, None]
    if window is not None:
        mask &= kpos > qpos[:, None] - window
    if cap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)).float() * scale
    scores = torch.tanh(scores / cap) * cap
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


register_backend("torch", TorchAttentionBackend)
