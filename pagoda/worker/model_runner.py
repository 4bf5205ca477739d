"""Turns a :class:`SchedulerOutput` into tensors, runs the model, samples.

Owns the model, the per-layer paged KV cache and the attention backend. A step is three
small parts:

1. **prepare inputs** (:func:`pagoda.worker.input_batch.prepare_inputs`): flattened ids,
   positions, slots, per-request lengths and block tables, the logits rows to sample, the
   prompt-logprob jobs and the placeholder fills (pure host work, no request is changed);
2. **forward** on one of five paths, picked by :meth:`ModelRunner._forward_path`: a decode
   CUDA graph, a speculative-verify graph, a single-request prefill-chunk graph, a mixed-step
   graph (several requests' prompt chunks, with decodes), or eager;
3. **sample** the logits rows (and compute prompt logprobs).

``execute_async`` launches a step and returns without waiting for the device; its
:class:`StepHandle` brings the sampled tokens to the host. A request scheduled while its
previous token is still being sampled (async scheduling) gets that token on the device,
from the previous step's output tensor, before the forward reads it.

The runner changes no scheduler state: which prompt logprobs a step reports, and how many
rows each request samples, come decided in the :class:`SchedulerOutput`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pagoda import envs
from pagoda.attention import kv_quant
from pagoda.attention.backend import default_backend_name, get_backend
from pagoda.attention.metadata import AttentionMetadata
from pagoda.config import EngineConfig
from pagoda.core.scheduler import SchedulerOutput
from pagoda.errors import EngineFatalError
from pagoda.layers.argmax import argmax_rows
from pagoda.layers.rejection_sampler import greedy_verify, rejection_sample
from pagoda.layers.sampler import (
    DeviceSample,
    greedy_argmax_only,
    plain_greedy,
    prompt_logprobs,
    sample_on_device,
    to_device,
)
from pagoda.models.loader import load_model
from pagoda.pooling.pooler import Pooler
from pagoda.structured_output.bitmask import apply_token_bitmask
from pagoda.worker import cpu_threads, kv_cache
from pagoda.worker.block_table import BlockTableCache
from pagoda.worker.input_batch import StepInputs, prepare_inputs
from pagoda.worker.jit_precompile import JitPrecompiler
from pagoda.worker.kv_cache import CPU_DEFAULT_KV_BYTES, MemorySnapshot, log_kv_cache

if TYPE_CHECKING:
    from pagoda.distributed.executor import Executor
    from pagoda.distributed.messages import ForwardStep
    from pagoda.distributed.parallel_state import TPGroup
    from pagoda.distributed.pipeline import PPStage
    from pagoda.lora.manager import LoRAManager
    from pagoda.structured_output.step_bitmask import StepBitmask
    from pagoda.worker.chunk_graphs import ChunkGraphs
    from pagoda.worker.cuda_graphs import DecodeGraphs
    from pagoda.worker.mixed_graphs import MixedGraphs
    from pagoda.worker.verify_graphs import VerifyGraphs

logger = logging.getLogger("pagoda")

__all__ = ["ModelRunner", "PendingSample", "RunnerOutput", "StepHandle", "PromptLogprobChunk", "log_kv_cache"]

LogprobEntry = tuple[float, int, list[int], list[float]]  # (logprob, rank, top ids, top logprobs)
Fill = Callable[[torch.Tensor], object]


@dataclass
class PromptLogprobChunk:
    start_index: int  # prompt index of the first entry
    logprobs: list[float]
    ranks: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


@dataclass
class RunnerOutput:
    # Each sampling request's new tokens, in order (one per sampled row; one row today).
    sampled: dict[str, list[int]] = field(default_factory=dict)
    # Per sampled token, for requests that asked for logprobs.
    logprobs: dict[str, list[LogprobEntry]] = field(default_factory=dict)
    prompt_logprobs: dict[str, PromptLogprobChunk] = field(default_factory=dict)
    # Pooling runner: each finishing request's pooled output (float32, CPU).
    pooled: dict[str, torch.Tensor] = field(default_factory=dict)
    # EAGLE proposers: the step's target hidden states (pagoda.spec_decode.eagle.SpecHidden; device rows that
    # the next step may overwrite: read before launching it).
    spec_hidden: Any = None


@dataclass
class StepHandle:
    """A launched step. ``result()`` waits for its sampled tokens (once) and returns them."""

    out: RunnerOutput
    sample_ids: list[str]
    num_sample_rows: list[int]  # per request in sample_ids: its rows in the sampled tokens
    device_sample: DeviceSample | None
    # Pipeline parallelism: the engine core's own stage runs when the result is asked for (the workers' stages
    # were sent the step at launch), so several steps can be in the pipeline at once.
    deferred: Callable[[], StepHandle] | None = None
    # perf_counter() when result()'s wait for the device ended (the step's end as the host sees it, before the
    # token lists are built); None before result() or without a device wait
    done_at: float | None = None

    def result(self) -> RunnerOutput:
        if self.deferred is not None:
            run, self.deferred = self.deferred, None
            return run().result()
        ds, self.device_sample = self.device_sample, None
        if ds is not None:
            res = ds.finish()
            self.done_at = ds.done_at
            row = 0
            for rid, n in zip(self.sample_ids, self.num_sample_rows, strict=True):
                toks = res.token_ids[row : row + n]
                if n > 1:  # a verify: rows after the first rejection hold -1
                    toks = toks[: toks.index(-1)] if -1 in toks else toks
                self.out.sampled[rid] = toks
                lps = res.logprobs[row : row + len(toks)]
                if lps[0] is not None:
                    self.out.logprobs[rid] = lps  # type: ignore[assignment]
                row += n
        return self.out


@dataclass
class ForwardResult:
    """Hidden states of every row (eager), and/or logits computed inside a graph:
    ``(logits in the model dtype [S, V], their argmax [S])`` for the sampled rows."""

    hidden: torch.Tensor | None
    graph_logits: tuple[torch.Tensor, torch.Tensor] | None = None
    aux: torch.Tensor | None = None  # EAGLE-3: the target's aux hidden states of every row


@dataclass
class PendingSample:
    """A step whose forward is queued on the device and whose sampling is not yet (see
    :meth:`ModelRunner.forward_async`)."""

    sched: SchedulerOutput
    inputs: StepInputs
    fwd: ForwardResult


class ModelRunner:
    def __init__(self, cfg: EngineConfig, tp: TPGroup | None = None, pp: PPStage | None = None) -> None:
        """``tp`` (and ``pp``): given, this runner is a worker rank (pagoda.distributed.worker); otherwise, with
        more than one rank (tensor x pipeline), it is the engine core's rank and starts the others. A runner that
        fails to build stops the ranks it started (the failure's traceback may keep it alive, and one process holds
        one distributed engine)."""
        try:
            self._build(cfg, tp, pp)
        except BaseException:
            executor = getattr(self, "executor", None)
            if executor is not None:
                executor.shutdown()
            raise

    def _build(self, cfg: EngineConfig, tp: TPGroup | None, pp: PPStage | None) -> None:
        self.cfg = cfg
        self.device = cfg.device
        self.executor: Executor | None = None
        if tp is None and cfg.tensor_parallel_size * cfg.pipeline_parallel_size > 1:
            from pagoda.distributed.executor import make_executor

            self.executor = make_executor(cfg)
            tp, pp = self.executor.tp, self.executor.pp
        self.tp = tp
        self.pp = pp
        if self.device.type == "cpu":
            from pagoda.worker.cpu_malloc import tune_malloc

            tune_malloc()
        # Seconds of each start-up phase, in order (EngineCore logs them once the engine is ready).
        self.startup_phases: dict[str, float] = {}
        t0 = time.perf_counter()
        self.memory_before_load = MemorySnapshot.take() if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            self.startup_phases["CUDA"] = time.perf_counter() - t0
        # Start-up Triton compiles side by side (jit_precompile.py); a known config's variants begin now.
        self.jit = JitPrecompiler.for_engine(cfg, self.device) if tp is None and pp is None else None
        if self.jit is not None:
            self.jit.start_manifest_preload()
        torch.manual_seed((cfg.seed + envs.dp_rank()) % 2**64)  # + replica index: each replica draws its own noise
        # Any model of pagoda/models: forward(ids, positions, kv_caches, meta, backend), compute_logits,
        # num_layers / num_kv_heads / head_dim / shape.
        backend_name = cfg.attention_backend or default_backend_name(self.device)
        self.kv_dtype = kv_quant.kv_cache_torch_dtype(cfg.kv_cache_dtype, cfg.dtype)
        kv_quant.check_supported(self.kv_dtype, self.device, backend_name)  # before the model loads
        t0 = time.perf_counter()
        self.model: Any = load_model(cfg, tp, pp)
        self.startup_phases["weights"] = time.perf_counter() - t0
        self.lora: LoRAManager | None = self._attach_lora() if cfg.lora is not None else None
        kv_quant.log_scales(self.model, self.kv_dtype)
        self.pooler: Pooler | None = Pooler(cfg.pooler, self.model) if cfg.pooler is not None else None
        self.backend = get_backend(backend_name)
        if self.device.type == "cpu" and hasattr(self.backend, "step_memo"):  # eager steps only (torch_ref.py)
            self.backend.step_memo = True
        # Under the passive wait policy a small CPU step runs its forward on one thread (cpu_threads.py).
        self.small_steps_one_thread = cpu_threads.small_steps_one_thread(self.device.type, cfg.deterministic)
        if cfg.speculative_config is not None and self.device.type == "cpu":
            # A verify's rows must equal its decode rows bit for bit: attended as decode rows however many it has,
            # and, for a 4-bit weight whose kernel builds can disagree, one build for every row count
            # (cpu_int4_dot.one_kernel_needed; before the first forward binds the decoder stack).
            if hasattr(self.backend, "decode_like_rows"):
                self.backend.decode_like_rows = max(self.backend.decode_like_rows,
                                                    cfg.speculative_config.num_speculative_tokens + 1)
            from pagoda.quantization.int_weight import IntWeight
            from pagoda.quantization.kernels import cpu_int4_dot

            for m in self.model.modules():
                if isinstance(m, IntWeight):
                    m.one_kernel = cpu_int4_dot.one_kernel_needed(m.group_size)
        if cfg.deterministic:
            if not hasattr(self.backend, "batch_invariant"):
                raise ValueError(f"--deterministic: the attention backend {backend_name!r} has no batch-invariant "
                                 f"mode")
            self.backend.batch_invariant = True
        self.block_size = cfg.block_size
        self.kv_caches: kv_cache.KVCaches = []
        # Host KV tier: the same per-layer layout, in (pinned, on CUDA) host memory.
        self.host_caches: kv_cache.KVCaches = []
        self.num_blocks = 0
        self.graphs: DecodeGraphs | None = None
        self.chunk_graphs: ChunkGraphs | None = None
        self.mixed_graphs: MixedGraphs | None = None
        self.verify_graphs: VerifyGraphs | None = None
        self.bt_cache: BlockTableCache | None = None
        # The last launched step's sampled tokens (device) and each request's row in them:
        # the source of tokens the host does not know yet (async scheduling).
        self._prev_tokens: torch.Tensor | None = None
        self._prev_rows: dict[str, int] = {}
        # EAGLE proposers set this (spec_decode/eagle.py): "last" (the final hidden states) or "aux" (EAGLE-3's
        # aux layers) are handed over with every step's output; the chunk graph, which keeps no rows, is off.
        self.spec_hidden: str | None = None
        self.last_forward_path = "eager"  # the path of the last forward (_forward_path), for the step timeline

    def _attach_lora(self) -> LoRAManager:
        """``--enable-lora``: slot buffers and hooks on the model's target linears (pagoda/lora/manager.py). The
        paths that skip the linear modules are switched off: the FP8 rows that norms quantize for the next linear,
        and the native CPU decoder stack on steps with adapter rows (:meth:`_lend_cpu_stack`). CUDA graphs capture
        the hooks (their row mask is a persistent buffer, pagoda/lora/layers.py)."""
        from pagoda.lora.manager import LoRAManager
        from pagoda.models.llama import DecoderLayer, LlamaForCausalLM

        assert self.cfg.lora is not None
        model = self.model
        if type(model) is not LlamaForCausalLM:  # create_config refuses other architectures first
            raise ValueError(f"--enable-lora: {type(model).__name__} takes no LoRA adapters in pagoda.")
        # the native CPU decoder stack skips the hooks: it runs only the steps with no adapter rows (_lend_cpu_stack)
        self._lora_stack, self._stack_lent = model._cpu_stack, False
        model._cpu_stack = None
        for layer in model.layers:
            if isinstance(layer, DecoderLayer):
                layer.fp8_rows_attn = layer.fp8_rows_mlp = False
                layer.mlp.fp8_rows_down = False  # type: ignore[assignment]  # nn.Module attributes: Tensor | Module
        if self.device.type == "cpu":
            logger.info("--enable-lora: the native CPU decoder stack runs only steps without adapter rows, so each "
                        "request's adapter applies")
        cfg, lora = self.cfg, self.cfg.lora  # a step's rows: its token budget, or a graph's padded bucket (<= 512)
        return LoRAManager(model, lora, self.device, max(cfg.max_num_batched_tokens, cfg.max_num_seqs, 512))

    def _lend_cpu_stack(self) -> None:
        """``--enable-lora``: the model's native CPU decoder stack (bound lazily by the model, where it qualifies)
        runs a step only when no row of it uses an adapter, since it skips the linear modules and so the LoRA hooks;
        base-model steps of a LoRA engine then run as fast as without LoRA. Called once per step, after
        ``LoRAManager.set_batch``."""
        assert self.lora is not None
        model = self.model
        if self._stack_lent:  # what the model made of it: bound on its first use, or None where it does not qualify
            self._lora_stack = model._cpu_stack
        self._stack_lent = not self.lora.batch.active and self._lora_stack is not None
        model._cpu_stack = self._lora_stack if self._stack_lent else None

    def shutdown(self) -> None:
        """Drop the model, KV caches, host caches and CUDA graphs (with their memory pools).
        Idempotent; the runner cannot run steps afterwards."""
        self.graphs = None
        self.chunk_graphs = None
        self.mixed_graphs = None
        self.verify_graphs = None
        self.kv_caches = []
        self.host_caches = []
        self.bt_cache = None
        self._prev_tokens, self._prev_rows = None, {}
        self.model = None
        if self.executor is not None:
            self.executor.shutdown()

    # ------------------------------------------------------------ KV cache
    def bytes_per_block(self) -> int:
        m = self.model
        return kv_cache.bytes_per_block(m.num_layers, self.block_size, m.num_kv_heads, m.head_dim, self.kv_dtype)

    def determine_num_blocks(self) -> int:
        """KV blocks of the cache; with tensor parallelism, the smallest of every rank's (rank 0 asks the workers)."""
        t0 = time.perf_counter()
        num = self._local_num_blocks()
        if self.executor is not None:
            num = self.executor.agree_num_blocks(num)
        self.startup_phases["memory profile"] = time.perf_counter() - t0
        return num

    def _local_num_blocks(self) -> int:
        cfg = self.cfg
        per_block = self.bytes_per_block()
        if cfg.num_gpu_blocks_override:
            return cfg.num_gpu_blocks_override
        if not getattr(self.model, "needs_kv_cache", True):
            # An encoder keeps no K/V: blocks are only the scheduler's bookkeeping, enough for full concurrency.
            return cfg.max_num_seqs * (-(-cfg.max_model_len // self.block_size)) + 1
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
        """KV bytes: this engine's share of the card less its own use and the activation peak
        of a ``max_num_batched_tokens`` forward, measured with a throwaway cache."""
        assert self.memory_before_load is not None
        if self.jit is not None and self.jit.activation_peak is not None:  # measured by an earlier start
            logger.info("Activation peak %.2f GiB, as measured by the last start of this config",
                        self.jit.activation_peak / 2**30)
            return kv_cache.cuda_kv_budget(self.memory_before_load, self.jit.activation_peak,
                                           self.cfg.gpu_memory_utilization)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        n = self.cfg.max_num_batched_tokens
        self.allocate_kv_cache(-(-n // self.block_size) + 1)
        with self.jit.dry_pass() if self.jit is not None else contextlib.nullcontext():
            self._dummy_forward(n)  # dry: only torch's allocations are measured (jit_precompile.py)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        self.kv_caches = []
        if self.jit is not None:
            self.jit.activation_peak = peak
        return kv_cache.cuda_kv_budget(self.memory_before_load, peak, self.cfg.gpu_memory_utilization)

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
            if self.pp is not None:  # no transfers: this stage's layers on zeros
                h = self.pp.forward(self.model, ids, pos, self.kv_caches, meta, self.backend, local_only=True)
                if not self.pp.is_last:
                    return
            else:
                h = self.model(ids, pos, self.kv_caches, meta, self.backend)
            if self.pooler is None:
                self.model.compute_logits(h[-1:])

    def allocate_kv_cache(self, num_blocks: int) -> None:
        m = self.model
        self.kv_caches = kv_cache.allocate_kv_caches(
            m.num_layers, num_blocks, self.block_size, m.num_kv_heads, m.head_dim, self.kv_dtype, self.device,
            getattr(self.backend, "kv_layout", "NHD"),
        )
        self.num_blocks = num_blocks

    def allocate_host_cache(self, num_blocks: int) -> None:
        self.host_caches = kv_cache.allocate_host_caches(self.kv_caches, num_blocks, self.device.type == "cuda")

    def _graphs_wanted(self) -> bool:
        """CUDA graphs are captured: CUDA, the Triton backend, not enforce_eager, a generating model that supports
        them, no pipeline stages (they run eager: no lockstep capture)."""
        return not (self.device.type != "cuda" or self.cfg.enforce_eager or self.backend.name != "triton"
                    or self.pooler is not None or self.cfg.pipeline_parallel_size > 1
                    or not getattr(self.model, "supports_cuda_graphs", True))  # e.g. the transformers fallback

    def maybe_capture_graphs(self) -> float:
        """Capture the CUDA graphs (when :meth:`_graphs_wanted`), their Triton kernels compiled side by side
        first (jit_precompile.py). Returns the capture seconds."""
        jit, self.jit = self.jit, None
        wanted = self._graphs_wanted()
        if jit is not None:
            t0 = time.perf_counter()
            try:
                how = ("variants listed by the manifest of this config" if not jit.needs_dry_pass
                       else "variants found by the dry memory-profile run")
                if wanted and jit.needs_dry_pass:  # find the captures' kernel variants without compiling them
                    t_dry = time.perf_counter()
                    try:
                        with jit.dry_pass():
                            self._capture_graphs()
                        how = f"variants found by a dry pass of the captures, {time.perf_counter() - t_dry:.1f} s"
                    except Exception as e:  # the real captures below compile what is missing, as before
                        logger.warning("The dry pass of the CUDA-graph captures failed (%s: %s); their Triton "
                                       "kernels compile at their first launch", type(e).__name__, e)
                    self._drop_graphs()
                ok, failed, waited = jit.compile_all()
                logger.info("Compiled or loaded %d Triton kernel variants on %d threads in %.1f s (%s%s)", ok,
                            jit.workers, waited, how, f"; {failed} left to their first launch" if failed else "")
                jit.save_manifest()
            finally:
                jit.close()
            self.startup_phases["Triton precompile"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        seconds = self._capture_graphs() if wanted else 0.0
        if wanted:
            self.startup_phases["graph captures"] = time.perf_counter() - t0
        return seconds

    def _drop_graphs(self) -> None:
        self.graphs = self.chunk_graphs = self.mixed_graphs = self.verify_graphs = None
        gc.collect()  # the graphs' memory pool goes back before the real captures
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def _capture_graphs(self) -> float:
        from pagoda.worker.cuda_graphs import DecodeGraphs, default_capture_sizes

        if self.lora is not None:  # the graphs replay the LoRA hooks' kernels; eager steps run them too (same numbers)
            self.lora.batch.always = True
        self.graphs = DecodeGraphs(
            self.model, self.backend, self.kv_caches, self.block_size, self.cfg.max_model_len,
            default_capture_sizes(self.cfg.max_num_seqs), self.device, logits_in_graph=self.tp is None,
        )
        self.graphs.capture()  # tensor parallelism: every rank captures now, in lockstep (cuda_graphs.py)
        if self.tp is not None:  # TP: verify steps and prompt chunks run eagerly (only decode graphs are lockstep)
            return self.graphs.capture_seconds
        seconds = self.graphs.capture_seconds + self._capture_verify_graphs()
        if envs.chunk_graphs_enabled():  # A/B switches for benchmarks
            from pagoda.worker.chunk_graphs import ChunkGraphs

            self.chunk_graphs = ChunkGraphs(
                self.model, self.backend, self.kv_caches, self.block_size, self.cfg.max_model_len, self.device,
            )
            self.chunk_graphs.capture()
            seconds += self.chunk_graphs.capture_seconds
        if envs.mixed_graphs_enabled():
            from pagoda.worker.mixed_graphs import MixedGraphs, mixed_buckets

            self.mixed_graphs = MixedGraphs(
                self.model, self.backend, self.kv_caches, self.block_size, self.cfg.max_model_len,
                self.cfg.max_num_seqs, self.device, buckets=mixed_buckets(self.cfg.max_num_batched_tokens),
            )
            self.mixed_graphs.capture()
            seconds += self.mixed_graphs.capture_seconds
        return seconds

    def _capture_verify_graphs(self) -> float:
        """Speculative decoding: graphs for verify steps of k + 1 tokens per request (worker/verify_graphs.py)."""
        spec = self.cfg.speculative_config
        if spec is None or self.graphs is None:
            return 0.0
        from pagoda.worker.verify_graphs import VerifyGraphs, verify_capture_sizes

        sizes = verify_capture_sizes(self.graphs.sizes)
        if not sizes:
            return 0.0
        self.verify_graphs = VerifyGraphs(self.model, self.backend, self.kv_caches, self.block_size,
                                          self.cfg.max_model_len, sizes, spec.num_speculative_tokens + 1, self.device)
        self.verify_graphs.capture()
        return self.verify_graphs.capture_seconds

    def _apply_kv_transfers(self, sched: SchedulerOutput) -> None:
        """Host-tier stores, fork copies, host-tier loads: in this order, before the forward."""
        if sched.swap_out:
            kv_cache.swap_out(self.kv_caches, self.host_caches, sched.swap_out, self.device)
        if sched.block_copies:
            kv_cache.copy_blocks(self.kv_caches, sched.block_copies, self.device)
        if sched.swap_in:
            kv_cache.swap_in(self.kv_caches, self.host_caches, sched.swap_in, self.device)

    # ---------------------------------------------------------------- step
    def execute(
        self, sched: SchedulerOutput, block_ids: dict[str, list[int]], epochs: dict[str, int] | None = None
    ) -> RunnerOutput:
        """Run one step and wait for its sampled tokens."""
        return self.execute_async(sched, block_ids, epochs).result()

    @torch.inference_mode()
    def execute_async(
        self, sched: SchedulerOutput, block_ids: dict[str, list[int]], epochs: dict[str, int] | None = None
    ) -> StepHandle:
        """Launch one step (device work queued, nothing waited for unless prompt logprobs are asked).

        ``epochs``: the KV manager's per-request block-list epochs; given, block tables come
        from the persistent :class:`BlockTableCache` (needed by the CUDA-graph paths)."""
        if self.pp is not None:
            return self._launch_pipelined(sched, block_ids)
        self._apply_kv_transfers(sched)
        inputs, rows = self._prepare(sched, block_ids, epochs)
        if self.executor is None:
            fwd = self._forward(inputs, rows, self._placeholder_fill(inputs.fills))
            return self._finish_step(sched, inputs, fwd)
        return self._step_distributed(sched, inputs, rows, sched.block_copies)

    def _prepare(self, sched: SchedulerOutput, block_ids: dict[str, list[int]],
                 epochs: dict[str, int] | None) -> tuple[StepInputs, list[int] | None]:
        """The step's input tensors and its persistent block-table rows (None: tables built per step)."""
        inputs = prepare_inputs(sched, block_ids, self.block_size, self._prev_rows)
        if self.lora is not None:  # the step's adapters into their slots, their rows into the hooks
            self.lora.set_batch(inputs.adapter_ids, inputs.query_lens)
            self._lend_cpu_stack()
        elif inputs.adapter_ids.count(None) != len(inputs.adapter_ids):
            raise ValueError("a step names a LoRA adapter but this engine was started without --enable-lora")
        return inputs, self._block_table_rows(inputs, epochs)

    @property
    def can_defer_sampling(self) -> bool:
        """Whether :meth:`forward_async` / :meth:`sample_async` may split a step: one process, generative
        (a distributed step samples inside the same collective boundary as its forward)."""
        return self.executor is None and self.pp is None and self.pooler is None

    @torch.inference_mode()
    def forward_async(
        self, sched: SchedulerOutput, block_ids: dict[str, list[int]], epochs: dict[str, int] | None = None
    ) -> PendingSample:
        """Launch a step's forward only (as :meth:`execute_async`, without the sampling). Its sampling waits
        for :meth:`sample_async`, so the host can fill the step's grammar bitmask while the device runs the
        forward. No other step may be launched in between (the next step's inputs read this step's tokens)."""
        if not self.can_defer_sampling:
            raise RuntimeError("forward_async needs a single-process generative runner (see can_defer_sampling)")
        self._apply_kv_transfers(sched)
        inputs, rows = self._prepare(sched, block_ids, epochs)
        return PendingSample(sched, inputs, self._forward(inputs, rows, self._placeholder_fill(inputs.fills)))

    @torch.inference_mode()
    def sample_async(self, pending: PendingSample) -> StepHandle:
        """Queue the sampling of a step launched by :meth:`forward_async` (its ``sched.grammar_bitmask`` set
        by now); returns the step's handle, as :meth:`execute_async` does."""
        return self._finish_step(pending.sched, pending.inputs, pending.fwd)

    def _launch_pipelined(self, sched: SchedulerOutput, block_ids: dict[str, list[int]]) -> StepHandle:
        """Pipeline parallelism: send the step to every worker now (the first stage starts at once); this
        rank's own stage (the last: receive, its layers, sample) runs when the handle's result is asked for,
        in launch order. Block copies wait until then too: an earlier step may still write those blocks here."""
        inputs = prepare_inputs(sched, block_ids, self.block_size, {})
        if inputs.adapter_ids.count(None) != len(inputs.adapter_ids):
            raise ValueError("per-request adapters (LoRA) are not supported by this model runner")
        assert self.executor is not None
        self.executor.broadcast_step(inputs, sched.block_copies, self._logits_calls(inputs))  # eager, no fills

        def run() -> StepHandle:
            with torch.inference_mode():
                try:
                    self._apply_kv_transfers(sched)
                except Exception as e:  # the other stages ran this step: a retry would read the wrong tensors
                    raise EngineFatalError(f"the last pipeline stage failed mid-step, the stages are out of step: "
                                           f"{type(e).__name__}: {e}") from e
                return self._step_distributed(sched, inputs, None, None)

        return StepHandle(RunnerOutput(), [], [], None, deferred=run)

    def _finish_step(self, sched: SchedulerOutput, inputs: StepInputs, fwd: ForwardResult) -> StepHandle:
        """Prompt logprobs and sampling of a step whose forward has run (or is queued on the device)."""
        if self.pooler is not None:
            return self._pool(inputs, fwd)
        out = RunnerOutput(prompt_logprobs=self._prompt_logprobs(inputs, fwd), spec_hidden=self._spec_rows(inputs, fwd))
        ds = self._sample(inputs, fwd, sched.grammar_bitmask)
        if ds is not None and self._shares_sampled(inputs):
            assert self.tp is not None
            self.tp.broadcast(ds.tokens)  # the workers' source for the next step's fills
        sample_ids = [r.request_id for r in inputs.sample_reqs]
        if ds is not None and not inputs.samples_one_row_each:
            ds.start_copy()  # a verify: the next step is scheduled after this one completes (no placeholders)
            self._prev_tokens, self._prev_rows = None, {}
        elif ds is not None:
            ds.start_copy()
            self._prev_tokens = ds.tokens
            # A request's next input is its last sampled row.
            ends = accumulate(inputs.num_sample_rows)
            self._prev_rows = {rid: end - 1 for rid, end in zip(sample_ids, ends, strict=True)}
        else:
            self._prev_tokens, self._prev_rows = None, {}
        return StepHandle(out, sample_ids, inputs.num_sample_rows, ds)

    def _spec_rows(self, inputs: StepInputs, fwd: ForwardResult) -> Any:
        """The step's target hidden states for an EAGLE proposer (None when none is configured)."""
        if self.spec_hidden is None:
            return None
        from pagoda.spec_decode.eagle import SpecHidden

        rows = fwd.aux if self.spec_hidden == "aux" else fwd.hidden
        if rows is None:
            raise RuntimeError(f"the forward path kept no {self.spec_hidden} hidden states for the EAGLE proposer")
        qsl = inputs.query_start_loc
        return SpecHidden(rows, inputs.req_ids, qsl, [inputs.positions[q] for q in qsl[:-1]])

    def _step_distributed(self, sched: SchedulerOutput, inputs: StepInputs, rows: list[int] | None,
                          block_copies: list[tuple[int, int]] | None) -> StepHandle:
        """The engine core's rank: send the step to the workers (``block_copies`` None: already sent), then run
        its own shard, logits and sampling (a worker that dies makes this raise
        :class:`~pagoda.distributed.executor.WorkerDied`). Any failure after the send is fatal: the other ranks
        ran (or wait in) this step's collectives (all-reduces, the logits gather, the sampled-token broadcast),
        so the ranks are out of step and a next step would combine the wrong tensors."""
        assert self.executor is not None
        if block_copies is not None:
            graph = self._forward_path(inputs, rows) == "decode_graph"
            self.executor.broadcast_step(inputs, block_copies, self._logits_calls(inputs), self._shares_sampled(inputs),
                                         graph)
        try:
            return self._finish_step(sched, inputs, self._forward(inputs, rows, self._placeholder_fill(inputs.fills)))
        except EngineFatalError:
            raise
        except Exception as e:
            self.executor.explain(e)
            raise EngineFatalError(f"a distributed step failed on the engine core's rank, the ranks are out of step: "
                                   f"{type(e).__name__}: {e}") from e
        except BaseException as e:  # KeyboardInterrupt, SystemExit: passed on; the workers are mid-step
            self.executor.abandon_step(f"a step was interrupted ({type(e).__name__}) after the workers got it")
            raise

    def _shares_sampled(self, inputs: StepInputs) -> bool:
        """Tensor parallelism with async scheduling: this step's sampled tokens go to the workers."""
        return self.executor is not None and self.cfg.async_scheduling and bool(inputs.sample_reqs)

    @staticmethod
    def _logits_calls(inputs: StepInputs) -> list[list[int]]:
        """The hidden rows of each ``compute_logits`` call this step makes, in order (:meth:`_prompt_logprobs`, then
        :meth:`_sample` on the eager path, the only one under tensor parallelism): the workers repeat them."""
        calls = [list(range(job.row, job.row + job.count)) for job in inputs.prompt_logprob_jobs]
        if inputs.sample_reqs:
            calls.append(list(inputs.logits_rows))
        return calls

    @torch.inference_mode()
    def execute_forward(self, step: ForwardStep) -> None:
        """A worker rank's step: rank 0's forward inputs, the same forward, and its share of each logits gather
        rank 0 makes (the vocabulary-parallel LM head); nothing is sampled here. With async scheduling the inputs
        rank 0 did not know come from rank 0's previous sample, broadcast to the workers (``shares_sampled``)."""
        if step.block_copies:
            kv_cache.copy_blocks(self.kv_caches, step.block_copies, self.device)
        inputs = StepInputs(input_ids=step.input_ids, positions=step.positions, slots=step.slots,
                            query_start_loc=step.query_start_loc, query_lens=step.query_lens, seq_lens=step.seq_lens,
                            block_tables=step.block_tables)
        fill = self._placeholder_fill([(d, s) for d, s in step.fills])
        if step.graph:  # rank 0 replays its decode graph: so does this rank (captured together)
            assert self.graphs is not None
            tables = np.zeros((len(step.block_tables), self.graphs.max_blocks), dtype=np.int32)
            for i, table in enumerate(step.block_tables):
                tables[i, : len(table)] = table
            hidden = self.graphs.run(step.input_ids, step.positions, step.slots, step.seq_lens, tables, fill)
        else:
            hidden = self._forward_eager(inputs, None, fill)
        if self.pp is not None and not self.pp.is_last:
            return  # the head (and its gathers) live on the last stage; the hidden state went on to the next stage
        for rows in step.logits_rows:
            self.model.compute_logits(hidden[to_device(rows, self.device)])
        if step.shares_sampled:
            assert self.tp is not None
            tokens = torch.empty(len(step.logits_rows[-1]), dtype=torch.long, device=self.device)
            self._prev_tokens = self.tp.broadcast(tokens)

    def _pool(self, inputs: StepInputs, fwd: ForwardResult) -> StepHandle:
        """Pooling runner: the pooled outputs of the requests whose prompt this step completed."""
        assert self.pooler is not None and fwd.hidden is not None
        out = RunnerOutput()
        reqs = inputs.sample_reqs
        if reqs:
            pos = {rid: i for i, rid in enumerate(inputs.req_ids)}
            idx = [pos[r.request_id] for r in reqs]
            starts = [inputs.query_start_loc[i] for i in idx]
            lens = [inputs.query_lens[i] for i in idx]
            params = [r.pooling_params for r in reqs]
            if any(p is None for p in params):
                raise ValueError("a generation request reached a pooling model")
            res = self.pooler(fwd.hidden, starts, lens, params)  # type: ignore[arg-type]
            for r, v in zip(reqs, res, strict=True):
                out.pooled[r.request_id] = v
                out.sampled[r.request_id] = []
        self._prev_tokens, self._prev_rows = None, {}
        return StepHandle(out, [], [], None)

    def _block_table_rows(self, inputs: StepInputs, epochs: dict[str, int] | None) -> list[int] | None:
        """Rows of the step's requests in the persistent block-table cache (None without epochs)."""
        if epochs is None:
            return None
        if self.bt_cache is None:
            self.bt_cache = BlockTableCache(
                max(2 * self.cfg.max_num_seqs, 64), -(-self.cfg.max_model_len // self.block_size),
                self.device.type == "cuda",
            )
        return self.bt_cache.rows_for(inputs.req_ids, inputs.block_tables, [epochs[r] for r in inputs.req_ids])

    def _placeholder_fill(self, fills: list[tuple[int, int]]) -> Fill | None:
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
        idx = to_device([f[0] for f in fills] + [f[1] for f in fills], self.device, torch.long)
        return lambda ids: ids.index_copy_(0, idx[:k], prev.index_select(0, idx[k:]))

    # ------------------------------------------------------------- forward
    def _forward_path(self, inputs: StepInputs, rows: list[int] | None) -> str:
        """``"decode_graph"``, ``"verify_graph"``, ``"chunk_graph"``, ``"mixed_graph"`` or ``"eager"``.

        Graphs need the block-table cache (``rows``). The decode graph takes a decode-only
        batch up to its largest size; the verify graph a batch of verifies (up to k proposals each;
        no prompt chunk, no prompt logprobs, no token still being sampled); the chunk graph one request's
        chunk up to its largest bucket, sampling its last row only, with no prompt logprobs (it
        computes no other logits), and not for an EAGLE proposer (it keeps no hidden rows); the mixed graph
        any other step up to its largest bucket (it returns every row's hidden state; not for an EAGLE-3
        proposer, which needs the aux layers' rows too).
        """
        if rows is None:
            return "eager"
        max_nb = inputs.max_num_blocks(self.block_size)
        if self.graphs is not None and inputs.is_decode_only and self.graphs.can_run(inputs.num_reqs, max_nb):
            return "decode_graph"
        vg = self.verify_graphs
        if (vg is not None and not inputs.prompt_logprob_jobs and not inputs.fills and max_nb <= vg.max_blocks
                and vg.can_run(inputs.query_lens, inputs.num_sample_rows, inputs.seq_lens)):
            return "verify_graph"
        if (
            self.chunk_graphs is not None and self.spec_hidden is None and inputs.num_reqs == 1
            and not inputs.prompt_logprob_jobs and inputs.samples_one_row_each
            and self.chunk_graphs.can_run(inputs.query_lens[0], max_nb)
        ):
            return "chunk_graph"
        mg = self.mixed_graphs
        if mg is not None and self.spec_hidden != "aux" and mg.can_run(len(inputs.input_ids), inputs.num_reqs, max_nb):
            return "mixed_graph"
        return "eager"

    def _forward(self, inputs: StepInputs, rows: list[int] | None, fill: Fill | None) -> ForwardResult:
        path = self.last_forward_path = self._forward_path(inputs, rows)
        if path == "decode_graph":
            assert self.graphs is not None and self.bt_cache is not None and rows is not None
            hidden = self.graphs.run(inputs.input_ids, inputs.positions, inputs.slots, inputs.seq_lens,
                                     self.bt_cache.table.numpy()[rows], fill)
            if not self.graphs.logits_in_graph:  # tensor parallelism: logits eagerly, like the workers
                return ForwardResult(hidden)
            logits, greedy = self.graphs.last_logits(inputs.num_reqs)
            if len(inputs.logits_rows) != inputs.num_reqs:  # a 1-token prompt chunk that does not sample
                idx = to_device(inputs.logits_rows, self.device)  # one row per request: row == request
                logits, greedy = logits[idx], greedy[idx]
            return ForwardResult(hidden, (logits, greedy), self.graphs.last_aux(inputs.num_reqs))
        if path == "verify_graph":
            # Every row of a verify is sampled, in order: the graph's logits rows are the step's logits rows.
            assert self.verify_graphs is not None and self.bt_cache is not None and rows is not None
            hidden = self.verify_graphs.run(inputs.input_ids, inputs.positions, inputs.slots, inputs.query_lens,
                                            inputs.seq_lens, self.bt_cache.table.numpy()[rows])
            return ForwardResult(hidden, self.verify_graphs.last_logits(), self.verify_graphs.last_aux())
        if path == "chunk_graph":
            # One request's prefill chunk: replayed, logits of its last row computed in the graph.
            assert self.chunk_graphs is not None and self.bt_cache is not None and rows is not None
            self.chunk_graphs.run(inputs.input_ids, inputs.positions, inputs.slots, inputs.seq_lens[0],
                                  self.bt_cache.table.numpy()[rows[0]], fill)
            return ForwardResult(None, self.chunk_graphs.last_logits())
        if path == "mixed_graph":
            # Several requests' rows replayed; their logits are computed eagerly by the sampler, as on the eager path.
            assert self.mixed_graphs is not None and self.bt_cache is not None and rows is not None
            hidden = self.mixed_graphs.run(inputs.input_ids, inputs.positions, inputs.slots, inputs.query_lens,
                                           inputs.seq_lens, self.bt_cache.table.numpy()[rows], fill)
            return ForwardResult(hidden)
        small = self.small_steps_one_thread and len(inputs.input_ids) <= cpu_threads.SMALL_STEP_MAX_ROWS
        with cpu_threads.one_thread() if small else contextlib.nullcontext():
            hidden = self._forward_eager(inputs, rows, fill)
        return ForwardResult(hidden, aux=self.model.aux_hidden if self.spec_hidden == "aux" else None)

    def _forward_eager(self, inputs: StepInputs, rows: list[int] | None, fill: Fill | None) -> torch.Tensor:
        dev = self.device
        max_nb = inputs.max_num_blocks(self.block_size)
        if rows is not None:
            assert self.bt_cache is not None
            bt = self.bt_cache.table[torch.tensor(rows), :max_nb]
        else:
            bt = torch.tensor([t[:max_nb] + [0] * (max_nb - len(t[:max_nb])) for t in inputs.block_tables],
                              dtype=torch.int32)
        meta = AttentionMetadata(
            query_start_loc=to_device(inputs.query_start_loc, dev, torch.int32),
            seq_lens=to_device(inputs.seq_lens, dev, torch.int32),
            block_tables=(bt.pin_memory() if dev.type == "cuda" else bt).to(dev, non_blocking=True),
            slot_mapping=to_device(inputs.slots, dev, torch.int64),
            max_query_len=max(inputs.query_lens),
            max_seq_len=max(inputs.seq_lens),
            query_lens_cpu=inputs.query_lens,
            seq_lens_cpu=inputs.seq_lens,
            is_decode_only=inputs.is_decode_only,
            split_kv_len=self.cfg.max_model_len,
        )
        ids_t = to_device(inputs.input_ids, dev, torch.long)  # pinned staging: no wait for the step in flight
        pos_t = to_device(inputs.positions, dev, torch.long)
        if fill is not None:
            fill(ids_t)
        if inputs.token_type_ids is not None and getattr(self.model, "uses_token_type_ids", False):
            tt = to_device(inputs.token_type_ids, dev, torch.long)
            return self.model(ids_t, pos_t, self.kv_caches, meta, self.backend, token_type_ids=tt)
        return self.model(ids_t, pos_t, self.kv_caches, meta, self.backend)

    # -------------------------------------------------------------- sample
    def _prompt_logprobs(self, inputs: StepInputs, fwd: ForwardResult) -> dict[str, PromptLogprobChunk]:
        """Prompt logprobs of this step's jobs (waits for the device)."""
        out: dict[str, PromptLogprobChunk] = {}
        for job in inputs.prompt_logprob_jobs:
            assert fwd.hidden is not None  # the chunk graph never runs a step with prompt logprobs
            req, first = job.request, job.first_pos
            lg = self.model.compute_logits(fwd.hidden[job.row : job.row + job.count])
            nxt = torch.tensor(req.all_token_ids[first + 1 : first + 1 + job.count], device=self.device)
            lps, ranks, ti, tv = prompt_logprobs(lg, nxt, req.sampling_params.prompt_logprobs or 0)
            out[req.request_id] = PromptLogprobChunk(first + 1, lps, ranks, ti, tv)
        return out

    def _sample(self, inputs: StepInputs, fwd: ForwardResult,
                grammar_bitmask: StepBitmask | None = None) -> DeviceSample | None:
        """Sample every logits row, without waiting for the device (``grammar_bitmask``: one row per logits row)."""
        reqs = inputs.sample_reqs
        if not reqs:
            return None
        plain = grammar_bitmask is None and all(plain_greedy(r) for r in reqs)
        if fwd.graph_logits is not None and plain:
            # The graph already took the argmax (bf16 -> fp32 is exact, so it is the same token); a verify
            # keeps each row's argmax while the drafts before it matched.
            if inputs.samples_one_row_each:
                return DeviceSample(fwd.graph_logits[1], [], [])
            return greedy_verify(fwd.graph_logits[1], inputs.num_sample_rows, inputs.spec_token_ids)
        if fwd.graph_logits is not None:
            logits = fwd.graph_logits[0].float()
        else:
            assert fwd.hidden is not None
            if len(inputs.logits_rows) == fwd.hidden.shape[0]:  # every row samples (pure decode): no gather
                logits = self.model.compute_logits(fwd.hidden)
            else:
                logits = self.model.compute_logits(fwd.hidden[to_device(inputs.logits_rows, self.device)])
        if not inputs.samples_one_row_each:  # speculative verify rows
            if plain:
                return greedy_verify(argmax_rows(logits), inputs.num_sample_rows, inputs.spec_token_ids)
            if grammar_bitmask is not None:  # a mask row per verified position; others all-ones
                apply_token_bitmask(logits, grammar_bitmask.data, grammar_bitmask.rows, grammar_bitmask.vocab_size)
            return rejection_sample(logits, reqs, inputs.num_sample_rows, inputs.spec_token_ids)
        if grammar_bitmask is None:
            return sample_on_device(logits, reqs)
        bm = grammar_bitmask
        apply_token_bitmask(logits, bm.data, bm.rows, bm.vocab_size)  # step 0 of sample_on_device
        if all(greedy_argmax_only(r) for r in reqs):  # what sample_on_device would do, without its per-row passes
            return DeviceSample(argmax_rows(logits), [], [])
        return sample_on_device(logits, reqs)
