"""Turns a :class:`SchedulerOutput` into tensors, runs the model, samples.

Owns the model, the per-layer paged KV cache and the attention backend. Every step
builds: flattened ``input_ids``/``positions``, the attention metadata (see
:mod:`pagoda.attention.metadata`) and ``logits_rows`` (the rows whose logits are
needed: the last row of each request that samples, plus all rows of prompt chunks
whose request asked for prompt logprobs).

``execute_async`` launches a step and returns without waiting for the device; its
:class:`StepHandle` brings the sampled tokens to the host. A request scheduled while its
previous token is still being sampled (async scheduling: ``num_placeholders``) gets that
token on the device, from the previous step's output tensor, before the forward reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from pagoda import envs
from pagoda.attention.backend import default_backend_name, get_backend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.config import EngineConfig
from pagoda.core.scheduler import SchedulerOutput
from pagoda.layers.sampler import DeviceSample, plain_greedy, prompt_logprobs, sample_on_device
from pagoda.models.loader import load_model
from pagoda.worker.block_table import BlockTableCache

logger = logging.getLogger("pagoda")

CPU_DEFAULT_KV_BYTES = 2 * 1024**3


@dataclass
class PromptLogprobChunk:
    start_index: int  # prompt index of the first entry
    logprobs: list[float]
    ranks: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


@dataclass
class RunnerOutput:
    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, tuple[float, int, list[int], list[float]]] = field(default_factory=dict)
    prompt_logprobs: dict[str, PromptLogprobChunk] = field(default_factory=dict)


@dataclass
class StepHandle:
    """A launched step. ``result()`` waits for its sampled tokens (once) and returns them."""

    out: RunnerOutput
    sample_ids: list[str]
    device_sample: DeviceSample | None

    def result(self) -> RunnerOutput:
        ds, self.device_sample = self.device_sample, None
        if ds is not None:
            res = ds.finish()
            for rid, tok, lp in zip(self.sample_ids, res.token_ids, res.logprobs):
                self.out.sampled[rid] = tok
                if lp is not None:
                    self.out.logprobs[rid] = lp
        return self.out


class ModelRunner:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.device = cfg.device
        if self.device.type == "cpu":
            from pagoda.worker.cpu_malloc import tune_malloc

            tune_malloc()
        torch.manual_seed(cfg.seed)
        self.model = load_model(cfg)
        self.backend = get_backend(cfg.attention_backend or default_backend_name(self.device))
        self.block_size = cfg.block_size
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Host KV tier: the same per-layer layout, in (pinned, on CUDA) host memory.
        self.host_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.num_blocks = 0
        self.graphs = None
        self.chunk_graphs = None
        self.bt_cache: BlockTableCache | None = None
        # The last launched step's sampled tokens (device) and each request's row in them:
        # the source of tokens the host does not know yet (async scheduling).
        self._prev_tokens: torch.Tensor | None = None
        self._prev_rows: dict[str, int] = {}

    # ------------------------------------------------------------ KV cache
    def bytes_per_block(self) -> int:
        m = self.model
        elt = torch.empty((), dtype=self.cfg.dtype).element_size()
        return 2 * m.num_layers * self.block_size * m.num_kv_heads * m.head_dim * elt

    def determine_num_blocks(self) -> int:
        cfg = self.cfg
        per_block = self.bytes_per_block()
        if cfg.num_gpu_blocks_override:
            return cfg.num_gpu_blocks_override
        if cfg.kv_cache_memory_bytes:
            budget = cfg.kv_cache_memory_bytes
        elif self.device.type == "cuda":
            budget = self._profile_cuda_budget()
        else:
            budget = CPU_DEFAULT_KV_BYTES
        num = budget // per_block
        if self.device.type != "cuda" and not cfg.kv_cache_memory_bytes:
            # On CPU, never allocate more than full concurrency at max_model_len could use.
            cap = cfg.max_num_seqs * (-(-cfg.max_model_len // self.block_size)) + 1
            num = min(num, cap)
        if num < 2:
            raise ValueError(
                f"The KV cache budget ({budget / 2**20:.1f} MiB) holds fewer than 2 blocks of "
                f"{per_block / 2**20:.2f} MiB; raise --kv-cache-memory-bytes or --gpu-memory-utilization, "
                f"or lower --block-size."
            )
        return int(num)

    def _profile_cuda_budget(self) -> int:
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        weights_and_more = total - free
        # Activation peak of a max_num_batched_tokens forward, measured with a throwaway cache.
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        n = self.cfg.max_num_batched_tokens
        nb = -(-n // self.block_size) + 1
        self.allocate_kv_cache(nb)
        self._dummy_forward(n)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        self.kv_caches = []
        torch.cuda.empty_cache()
        budget = int(total * self.cfg.gpu_memory_utilization) - weights_and_more - peak
        if budget <= 0:
            raise ValueError(
                f"No GPU memory left for the KV cache: weights and other use take {weights_and_more / 2**30:.1f} GiB "
                f"and activations {peak / 2**30:.1f} GiB of {total / 2**30:.1f} GiB at gpu_memory_utilization="
                f"{self.cfg.gpu_memory_utilization}. Raise --gpu-memory-utilization or lower --max-num-batched-tokens."
            )
        return budget

    def _dummy_forward(self, n: int) -> None:
        ids = torch.zeros(n, dtype=torch.long, device=self.device)
        # One sequence of n tokens; positions wrap so the rotary table is never indexed past its end.
        pos = torch.arange(n, device=self.device) % self.cfg.max_model_len
        nb = -(-n // self.block_size)
        bt = torch.arange(1, nb + 1, dtype=torch.int32, device=self.device).unsqueeze(0)
        meta = AttentionMetadata(
            query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([n], dtype=torch.int32, device=self.device),
            block_tables=bt,
            slot_mapping=torch.arange(n, device=self.device) + self.block_size,
            max_query_len=n,
            max_seq_len=n,
            query_lens_cpu=[n],
            seq_lens_cpu=[n],
            is_decode_only=n == 1,
        )
        with torch.inference_mode():
            h = self.model(ids, pos, self.kv_caches, meta, self.backend)
            self.model.compute_logits(h[-1:])

    def allocate_kv_cache(self, num_blocks: int) -> None:
        m = self.model
        if getattr(self.backend, "kv_layout", "NHD") == "HND":
            shape = (num_blocks, m.num_kv_heads, self.block_size, m.head_dim)
        else:
            shape = (num_blocks, self.block_size, m.num_kv_heads, m.head_dim)
        self.kv_caches = [
            (
                torch.zeros(shape, dtype=self.cfg.dtype, device=self.device),
                torch.zeros(shape, dtype=self.cfg.dtype, device=self.device),
            )
            for _ in range(m.num_layers)
        ]
        self.num_blocks = num_blocks

    def maybe_capture_graphs(self) -> float:
        """Capture decode CUDA graphs (CUDA, Triton backend, not enforce_eager). Returns seconds."""
        self.graphs = None
        if self.device.type != "cuda" or self.cfg.enforce_eager or self.backend.name != "triton":
            return 0.0
        from pagoda.worker.cuda_graphs import DecodeGraphs, default_capture_sizes

        self.graphs = DecodeGraphs(
            self.model, self.backend, self.kv_caches, self.block_size, self.cfg.max_model_len,
            default_capture_sizes(self.cfg.max_num_seqs), self.device,
        )
        self.graphs.capture()
        if not envs.chunk_graphs_enabled():  # A/B switch for benchmarks
            return self.graphs.capture_seconds
        from pagoda.worker.chunk_graphs import ChunkGraphs

        self.chunk_graphs = ChunkGraphs(
            self.model, self.backend, self.kv_caches, self.block_size, self.cfg.max_model_len, self.device,
        )
        self.chunk_graphs.capture()
        return self.graphs.capture_seconds + self.chunk_graphs.capture_seconds

    def allocate_host_cache(self, num_blocks: int) -> None:
        pin = self.device.type == "cuda"
        self.host_caches = [
            (
                torch.zeros((num_blocks, *k.shape[1:]), dtype=k.dtype, pin_memory=pin),
                torch.zeros((num_blocks, *v.shape[1:]), dtype=v.dtype, pin_memory=pin),
            )
            for k, v in self.kv_caches
        ]

    @torch.inference_mode()
    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """Device block -> host block, every layer (before the device block is overwritten)."""
        dev = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=self.device)
        host = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        for (k, v), (hk, hv) in zip(self.kv_caches, self.host_caches):
            hk.index_copy_(0, host, k.index_select(0, dev).cpu())
            hv.index_copy_(0, host, v.index_select(0, dev).cpu())

    @torch.inference_mode()
    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """Host block -> device block, every layer (before the forward reads it)."""
        host = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        dev = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=self.device)
        for (k, v), (hk, hv) in zip(self.kv_caches, self.host_caches):
            k.index_copy_(0, dev, hk.index_select(0, host).to(self.device, non_blocking=True))
            v.index_copy_(0, dev, hv.index_select(0, host).to(self.device, non_blocking=True))

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """KV of block ``src`` -> block ``dst`` in every layer (copy-on-write of shared blocks)."""
        src = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=self.device)
        dst = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            for k, v in self.kv_caches:
                k.index_copy_(0, dst, k.index_select(0, src))
                v.index_copy_(0, dst, v.index_select(0, src))

    # ---------------------------------------------------------------- step
    def execute(
        self, sched: SchedulerOutput, block_ids: dict[str, list[int]], epochs: dict[str, int] | None = None
    ) -> RunnerOutput:
        """Run one step and wait for its sampled tokens."""
        return self.execute_async(sched, block_ids, epochs).result()

    def _placeholder_fill(self, fills: list[tuple[int, int]]):
        """A function writing the previous step's sampled tokens into a device ``input_ids``:
        ``fills`` = (row of input_ids, row of the previous step's tokens)."""
        if not fills:
            return None
        prev = self._prev_tokens
        if prev is None:
            raise RuntimeError("a scheduled token is unknown but no step is in flight")
        k = len(fills)
        if all(d == i and s == i for i, (d, s) in enumerate(fills)):
            return lambda ids: ids[:k].copy_(prev[:k])  # steady decode: the same rows in the same order
        idx = torch.tensor([f[0] for f in fills] + [f[1] for f in fills], dtype=torch.long).to(
            self.device, non_blocking=True
        )
        return lambda ids: ids.index_copy_(0, idx[:k], prev.index_select(0, idx[k:]))

    @torch.inference_mode()
    def execute_async(
        self, sched: SchedulerOutput, block_ids: dict[str, list[int]], epochs: dict[str, int] | None = None
    ) -> StepHandle:
        """Launch one step (device work queued, nothing waited for unless prompt logprobs are asked)."""
        if sched.swap_out:
            self.swap_out(sched.swap_out)
        if sched.block_copies:
            self.copy_blocks(sched.block_copies)
        if sched.swap_in:
            self.swap_in(sched.swap_in)
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        qsl = [0]
        seq_lens: list[int] = []
        q_lens: list[int] = []
        tables: list[list[int]] = []
        req_ids: list[str] = []
        logits_rows: list[int] = []
        sample_reqs = []
        plp_jobs = []  # (req, first_row, first_pos, count)
        fills: list[tuple[int, int]] = []
        for s in sched.scheduled:
            req = s.request
            start, n = s.start, s.num_new_tokens
            end = start + n
            toks = req.all_token_ids[start:end]
            if len(toks) < n:  # the last token is still being sampled by the step in flight
                if len(toks) != n - 1 or req.request_id not in self._prev_rows:
                    raise RuntimeError(f"request {req.request_id}: {n - len(toks)} unknown input tokens")
                fills.append((qsl[-1] + n - 1, self._prev_rows[req.request_id]))
                toks.append(0)
            input_ids.extend(toks)
            positions.extend(range(start, end))
            blocks = block_ids[req.request_id]
            slots.extend(blocks[p // bs] * bs + p % bs for p in range(start, end))
            row0 = qsl[-1]
            qsl.append(row0 + n)
            seq_lens.append(end)
            q_lens.append(n)
            tables.append(blocks)
            req_ids.append(req.request_id)
            k = req.sampling_params.prompt_logprobs
            if k is not None:
                # Position p predicts prompt token p+1; report prompt indices not yet reported.
                first = max(start, req.prompt_logprobs_next - 1)
                last = min(end, req.num_prompt_tokens - 1)
                if last > first:
                    plp_jobs.append((req, row0 + first - start, first, last - first))
            if s.sample:
                logits_rows.append(row0 + n - 1)
                sample_reqs.append(req)

        dev = self.device
        max_nb = max(-(-sl // bs) for sl in seq_lens)
        rows = None
        if epochs is not None:
            if self.bt_cache is None:
                self.bt_cache = BlockTableCache(
                    max(2 * self.cfg.max_num_seqs, 64), -(-self.cfg.max_model_len // bs), dev.type == "cuda"
                )
            rows = self.bt_cache.rows_for(req_ids, tables, [epochs[r] for r in req_ids])
        graph_logits = None
        fill = self._placeholder_fill(fills)
        decode_only = max(q_lens) == 1
        if self.graphs is not None and decode_only and rows is not None and self.graphs.can_run(len(q_lens), max_nb):
            hidden = self.graphs.run(input_ids, positions, slots, seq_lens, self.bt_cache.table.numpy()[rows], fill)
            graph_logits = self.graphs.last_logits(len(q_lens))
        elif (
            self.chunk_graphs is not None and len(q_lens) == 1 and not plp_jobs and rows is not None
            and self.chunk_graphs.can_run(q_lens[0], max_nb)
        ):
            # One request's prefill chunk: replayed, logits of its last row computed in the graph.
            self.chunk_graphs.run(input_ids, positions, slots, seq_lens[0], self.bt_cache.table.numpy()[rows[0]], fill)
            graph_logits = self.chunk_graphs.last_logits()
            hidden = None
        else:
            if rows is not None:
                bt = self.bt_cache.table[torch.tensor(rows), :max_nb]
            else:
                bt = torch.tensor([t[:max_nb] + [0] * (max_nb - len(t[:max_nb])) for t in tables], dtype=torch.int32)
            meta = AttentionMetadata(
                query_start_loc=torch.tensor(qsl, dtype=torch.int32).to(dev, non_blocking=True),
                seq_lens=torch.tensor(seq_lens, dtype=torch.int32).to(dev, non_blocking=True),
                block_tables=bt.to(dev, non_blocking=True),
                slot_mapping=torch.tensor(slots, dtype=torch.int64).to(dev, non_blocking=True),
                max_query_len=max(q_lens),
                max_seq_len=max(seq_lens),
                query_lens_cpu=q_lens,
                seq_lens_cpu=seq_lens,
                is_decode_only=decode_only,
                split_kv_len=self.cfg.max_model_len,
            )
            ids_t = torch.tensor(input_ids, dtype=torch.long).to(dev, non_blocking=True)
            pos_t = torch.tensor(positions, dtype=torch.long).to(dev, non_blocking=True)
            if fill is not None:
                fill(ids_t)
            hidden = self.model(ids_t, pos_t, self.kv_caches, meta, self.backend)

        out = RunnerOutput()
        for req, row, first_pos, count in plp_jobs:
            lg = self.model.compute_logits(hidden[row : row + count])
            nxt = torch.tensor(req.all_token_ids[first_pos + 1 : first_pos + 1 + count], device=dev)
            lps, ranks, ti, tv = prompt_logprobs(lg, nxt, req.sampling_params.prompt_logprobs or 0)
            out.prompt_logprobs[req.request_id] = PromptLogprobChunk(first_pos + 1, lps, ranks, ti, tv)
            req.prompt_logprobs_next = first_pos + 1 + count
        ds = None
        if sample_reqs and graph_logits is not None and all(plain_greedy(r) for r in sample_reqs):
            # The graph already took the argmax (bf16 -> fp32 is exact, so it is the same token).
            ds = DeviceSample(graph_logits[1], [], [])
        elif sample_reqs:
            if graph_logits is not None:
                logits = graph_logits[0].float()
            elif len(logits_rows) == hidden.shape[0]:  # every row samples (pure decode): no gather
                logits = self.model.compute_logits(hidden)
            else:
                logits = self.model.compute_logits(hidden[torch.tensor(logits_rows, device=dev)])
            ds = sample_on_device(logits, sample_reqs)
        sample_ids = [r.request_id for r in sample_reqs]
        if ds is not None:
            ds.start_copy()
            self._prev_tokens = ds.tokens
            self._prev_rows = {rid: i for i, rid in enumerate(sample_ids)}
        else:
            self._prev_tokens, self._prev_rows = None, {}
        return StepHandle(out, sample_ids, ds)


def log_kv_cache(num_blocks: int, block_size: int, max_model_len: int, per_block: int) -> None:
    tokens = (num_blocks - 1) * block_size
    logger.info(
        "KV cache: %d blocks of %d tokens = %d tokens (%.1f MiB); maximum concurrency at max_model_len=%d: %.2fx",
        num_blocks - 1, block_size, tokens, num_blocks * per_block / 2**20, max_model_len, tokens / max_model_len,
    )

