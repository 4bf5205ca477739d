"""The engine core: scheduler + KV cache + model runner, driven one step at a time.

``step()`` = schedule → execute → update (with async scheduling, the update of the
previous step comes after this step is launched: see :meth:`EngineCore.step`). It owns no
tokenizer and no text: it takes token ids in and gives token ids (and logprobs) out, so it can live in its own process.

Structured outputs (:mod:`pagoda.structured_output`): a constrained request waits here, outside the
scheduler, until its grammar has compiled on the manager's worker thread (vLLM's ``WAITING_FOR_FSM``);
each launched step gets its bitmask from the matchers, and ``_complete`` advances them by the kept
tokens. A step with a constrained request is split (:meth:`ModelRunner.forward_async`): its forward is
launched first, its bitmask filled while the device runs it, then its sampling queued. With async
scheduling the forward of step N+1 is launched before step N completes (its placeholders read step N's
tokens on the device); step N's tokens then advance the matchers, and only then is N+1's bitmask
filled and its sampling queued, so the bitmask always follows the last token and the device does not
wait for the host's grammar work. A runner that cannot split a step (tensor or pipeline parallelism)
completes the step in flight first, as for penalties.
"""

from __future__ import annotations

import gc
import itertools
import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pagoda import envs
from pagoda.config import EngineConfig
from pagoda.core.async_scheduler import AsyncScheduler
from pagoda.core.host_tier import HostKVTier
from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.pipeline_scheduler import PipelineScheduler
from pagoda.core.request import Request, RequestStatus
from pagoda.core.scheduler import Scheduler, SchedulerOutput
from pagoda.engine.launch_pacing import LaunchPacer
from pagoda.engine.messages import (
    AdmissionLimits,
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    PooledData,
    PromptLogprobs,
    SchedulerStats,
    TokenLogprobs,
)
from pagoda.engine.step_timeline import StepTimeline
from pagoda.errors import EngineFatalError, ValidationError
from pagoda.layers.sampler import needs_host_history
from pagoda.lora.request import LoRARequest
from pagoda.spec_decode.metrics import spec_stats_fields
from pagoda.spec_decode.proposer import SpecDecoder, check_draft_vocab, make_spec_decoder
from pagoda.structured_output.manager import StructuredOutputManager
from pagoda.structured_output.params import FIELD as STRUCTURED_FIELD
from pagoda.worker.kv_cache import log_kv_cache
from pagoda.worker.model_runner import ModelRunner, PendingSample, PromptLogprobChunk, RunnerOutput, StepHandle

if TYPE_CHECKING:
    from pagoda.lora.manager import LoRAManager

logger = logging.getLogger("pagoda")

Launched = tuple[SchedulerOutput, StepHandle]  # a step whose device work (forward and sampling) is queued

_IDLE_GRAMMAR_WAIT_S = 0.005


def release_device_memory(device) -> None:
    """Collect garbage and return the CUDA caching allocator's unused blocks to the driver."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class EngineCore:
    def __init__(self, cfg: EngineConfig) -> None:
        """A core that fails to build shuts its runner down (its distributed ranks with it: the failure's
        traceback may keep the half-built core alive, and one process holds one distributed engine)."""
        try:
            self._build(cfg)
        except BaseException:
            runner = getattr(self, "runner", None)
            if runner is not None:
                runner.shutdown()
            raise

    def _build(self, cfg: EngineConfig) -> None:
        t0 = time.perf_counter()
        self.cfg = cfg
        if envs.log_jit_compiles():
            from pagoda.engine import jit_log

            if not jit_log.install():
                logger.warning("PAGODA_LOG_JIT_COMPILES: this Triton has no compile hooks (knobs.runtime); nothing "
                               "will be logged")
        self.runner = ModelRunner(cfg)
        self.spec: SpecDecoder | None = None
        if cfg.speculative_config is not None:
            # Before the target's KV sizing, so that a draft model's or head's weights and KV cache count as this
            # engine's own use inside its gpu_memory_utilization share (the target's cache takes what is left),
            # and before graph capture: an EAGLE-3 head sets the target's aux layers.
            self.spec = make_spec_decoder(cfg.speculative_config, cfg, self.runner)
            check_draft_vocab(self.spec, self.runner.model.shape.vocab_size)
        num_blocks = self.runner.determine_num_blocks()
        t_kv = time.perf_counter()
        self.runner.allocate_kv_cache(num_blocks)
        self.runner.startup_phases["KV allocation"] = time.perf_counter() - t_kv
        log_kv_cache(num_blocks, cfg.block_size, cfg.max_model_len, self.runner.bytes_per_block(),
                     self.runner.kv_dtype)
        self.graph_capture_seconds = self.runner.maybe_capture_graphs()
        host_tier = None
        if cfg.kv_offloading_size > 0:
            if not cfg.enable_prefix_caching:
                raise ValueError(
                    "--kv-offloading-size needs prefix caching: the host tier finds blocks by their prefix hashes. "
                    "Drop --no-enable-prefix-caching or the host tier."
                )
            per_block = self.runner.bytes_per_block()
            n_host = int(cfg.kv_offloading_size * 2**30) // per_block
            if n_host < 1:
                raise ValueError(
                    f"--kv-offloading-size={cfg.kv_offloading_size} GiB holds no KV block of "
                    f"{per_block / 2**20:.2f} MiB; "
                    f"raise it."
                )
            self.runner.allocate_host_cache(n_host)
            host_tier = HostKVTier(n_host)
            logger.info("Host KV tier: %d blocks (%.2f GiB of host memory)", n_host, n_host * per_block / 2**30)
        self.kv = KVCacheManager(
            num_blocks, cfg.block_size, enable_prefix_caching=cfg.enable_prefix_caching, host_tier=host_tier
        )
        scheduler_cls = (PipelineScheduler if cfg.pipeline_parallel_size > 1
                         else AsyncScheduler if cfg.async_scheduling else Scheduler)
        self.scheduler = scheduler_cls(
            self.kv,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            max_model_len=cfg.max_model_len,
            enable_chunked_prefill=cfg.enable_chunked_prefill,
            scheduling_policy=cfg.scheduling_policy,
            long_prefill_token_threshold=cfg.long_prefill_token_threshold,
            max_loras=cfg.lora.max_loras if cfg.lora is not None else None,
        )
        if self.runner.lora is not None:  # the host cache keeps what live requests use (never read again mid-run)
            self.runner.lora.in_use = self._live_adapter_ids
        self.vocab_size = self.runner.model.shape.vocab_size
        self.structured = StructuredOutputManager(cfg, self.vocab_size)
        # Constrained requests whose grammar is still compiling, in arrival order, with their fork_of.
        self._grammar_waiting: list[tuple[Request, str | None]] = []
        self.pooler = cfg.pooler
        # Async scheduling: the launched step whose outputs the next step() returns.
        self._inflight: tuple[SchedulerOutput, StepHandle] | None = None
        # Pipeline parallelism: launched steps, oldest first (vLLM's batch queue), at most one per stage.
        self._batch_queue: deque[tuple[SchedulerOutput, StepHandle]] = deque()
        self.num_steps_ahead = 0  # steps launched while the previous one was still in flight
        # Opt-in step timeline (engine/step_timeline.py); None: not recorded, no cost beyond the None tests.
        self.step_timeline: StepTimeline | None = None
        # When a server's loop may launch the next step (engine/launch_pacing.py): async scheduling on a GPU,
        # one stage, no speculation (a speculative step is completed before the next is scheduled anyway).
        self.pacer: LaunchPacer | None = (
            LaunchPacer() if (cfg.async_scheduling and cfg.pipeline_parallel_size == 1 and self.spec is None
                              and cfg.device.type == "cuda" and envs.launch_pacing_enabled()) else None
        )
        self.startup_seconds = time.perf_counter() - t0
        phases = self.runner.startup_phases
        rest = self.startup_seconds - sum(phases.values())
        logger.info("Engine built in %.1f s: %s, the rest %.1f s", self.startup_seconds,
                    ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()), rest)

    @property
    def num_blocks(self) -> int:
        return self.kv.num_blocks

    def admission_limits(self) -> AdmissionLimits:
        """What the front end's admission checks need to know about this core (sent in ``Ready``)."""
        cfg = self.cfg
        max_logprobs = self.vocab_size if cfg.max_logprobs == -1 else cfg.max_logprobs  # -1: no cap
        return AdmissionLimits(
            max_model_len=cfg.max_model_len, vocab_size=self.vocab_size, max_logprobs=max_logprobs,
            kv_cache_tokens=self.kv.usable_blocks * cfg.block_size,
            max_num_batched_tokens=cfg.max_num_batched_tokens, enable_chunked_prefill=cfg.enable_chunked_prefill,
        )

    def add_request(self, r: EngineCoreRequest) -> None:
        """Queue a request the front end admitted (see :mod:`pagoda.engine.admission`). Its LoRA adapter is read
        and checked here (once; the runner's manager caches it): a bad one raises ``ValidationError`` naming
        ``lora_request``, and nothing is queued."""
        req = Request(
            r.request_id, r.prompt_token_ids, r.sampling_params, set(r.eos_token_ids), r.max_tokens, r.arrival_time,
            cache_salt=r.cache_salt, priority=r.priority, pooling_params=r.pooling_params,
            token_type_ids=r.token_type_ids, secondary_eos_token_ids=r.secondary_eos_token_ids,
        )
        if r.lora_request is not None:
            try:
                self.add_lora(r.lora_request)
            except ValueError as e:
                raise ValidationError(str(e), "lora_request") from None
            req.adapter_id = r.lora_request.lora_int_id
        if r.sampling_params.structured_outputs is not None:
            req.grammar = self.structured.grammar_for(r.sampling_params.structured_outputs, r.prompt_token_ids)
            self._grammar_waiting.append((req, r.fork_of))
            return
        self.scheduler.add_request(req, fork_of=r.fork_of)

    # ------------------------------------------------------------------ LoRA
    def _lora(self) -> LoRAManager:
        lora = self.runner.lora
        if lora is None:
            raise ValueError("lora_request: this engine was started without LoRA; start it with enable_lora=True "
                             "(--enable-lora).")
        return lora

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """vLLM's ``add_lora``: read and check the adapter (unless cached) and keep it loaded. Raises
        ``ValueError`` naming the adapter and the problem (:class:`~pagoda.lora.peft.LoRANotFoundError` when
        there is no adapter at its path); True otherwise."""
        self._lora().add_adapter(lora_request)
        return True

    def remove_lora(self, lora_int_id: int) -> bool:
        """vLLM's ``remove_lora``: drop the adapter from the host cache; True if it was loaded."""
        return self._lora().remove_adapter(lora_int_id)

    def list_loras(self) -> set[int]:
        """vLLM's ``list_loras``: ids of the adapters loaded in host memory (empty without LoRA)."""
        lora = self.runner.lora
        return set(lora.loaded_ids()) if lora is not None else set()

    def _live_adapter_ids(self) -> set[int]:
        """Adapter ids of the requests the scheduler holds (running or waiting) and of those whose grammar compiles."""
        reqs = itertools.chain(self.scheduler.running, self.scheduler.waiting, (r for r, _ in self._grammar_waiting))
        return {r.adapter_id for r in reqs if r.adapter_id is not None}

    def _lora_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Requests per adapter name, running and waiting (``SchedulerStats``' LoRA fields; empty without LoRA)."""
        lora = self.runner.lora
        if lora is None:
            return {}, {}
        waiting_reqs = itertools.chain(self.scheduler.waiting, (r for r, _ in self._grammar_waiting))
        counts: tuple[dict[str, int], dict[str, int]] = ({}, {})
        for out, reqs in zip(counts, (self.scheduler.running, waiting_reqs), strict=True):
            for r in reqs:
                if r.adapter_id is not None:
                    name = lora.name_of(r.adapter_id)
                    out[name] = out.get(name, 0) + 1
        return counts

    def _admit_compiled(self) -> list[EngineCoreOutput]:
        """Hand requests whose grammar is ready to the scheduler (in arrival order); fail those whose compile
        failed or timed out. Returns the failures' outputs."""
        failed: list[EngineCoreOutput] = []
        still: list[tuple[Request, str | None]] = []
        for req, fork_of in self._grammar_waiting:
            assert req.grammar is not None
            err = req.grammar.error()
            if err is not None:
                failed.append(EngineCoreOutput(req.request_id, [], finish_reason="error", error=err,
                                               error_param=STRUCTURED_FIELD))
            elif req.grammar.ready():
                self.scheduler.add_request(req, fork_of=fork_of)
            else:
                still.append((req, fork_of))
        self._grammar_waiting = still
        return failed

    def _drop_grammar_waiting(self, request_ids: list[str]) -> None:
        ids = set(request_ids)
        self._grammar_waiting = [(r, f) for r, f in self._grammar_waiting if r.request_id not in ids]

    def abort_requests(self, request_ids: list[str]) -> None:
        self._drop_grammar_waiting(request_ids)
        self.scheduler.abort_requests(request_ids)
        if self.spec is not None:
            self.spec.release(self.scheduler.running)

    def finish_requests(self, request_ids: list[str]) -> None:
        """Finish requests the front end stopped (stop strings)."""
        self._drop_grammar_waiting(request_ids)
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_STOPPED)
        if self.spec is not None:
            self.spec.release(self.scheduler.running)

    def has_unfinished_requests(self) -> bool:
        return (self.scheduler.has_unfinished_requests() or self._inflight is not None or bool(self._batch_queue)
                or bool(self._grammar_waiting))

    def step(self) -> EngineCoreOutputs:
        """One engine iteration.

        Synchronous: schedule, run and update one step; its outputs are returned. With async
        scheduling one step stays in flight: a call schedules and launches step N, then waits
        for step N-1 and returns *its* outputs, so the host's scheduling and input preparation
        for step N overlap the device's work on step N-1. A step in flight whose requests need
        their last token on the host to be sampled again (penalties, min_tokens) is finished
        before the next one is scheduled.
        """
        tl = self.step_timeline
        if tl is not None:
            tl.begin()
        if self.pacer is not None:
            self.pacer.hold_ended(time.perf_counter())
        grammar_failed = self._admit_compiled()
        if self.cfg.pipeline_parallel_size > 1:
            out = self._step_with_batch_queue()
        else:
            out = self._step_sync() if not self.cfg.async_scheduling else self._step_async()
        if grammar_failed:
            out.outputs = grammar_failed + out.outputs
        elif self._grammar_waiting and not out.outputs and self._inflight is None and not self._batch_queue:
            self._wait_for_a_grammar()
        if self.runner.lora is not None:
            self.runner.lora.trim()  # host copies the finished requests no longer hold down
        if tl is not None:
            tl.end(out)
        return out

    def _wait_for_a_grammar(self) -> None:
        """Nothing ran and only compiles are pending: yield the CPU to them briefly (a new request still gets
        in within the wait)."""
        futures = [r.grammar.compiled for r, _ in self._grammar_waiting if r.grammar is not None]
        wait(futures, timeout=_IDLE_GRAMMAR_WAIT_S, return_when=FIRST_COMPLETED)

    def _step_async(self) -> EngineCoreOutputs:
        done = self._finish_inflight_if_host_history_needed()
        if done is not None and self.spec is not None:  # the next step is launched already
            return done
        launched, failed = self._schedule_and_launch_split()
        t_launch = time.perf_counter()
        if self._inflight is not None:
            done = self._complete(*self._inflight)
            if launched is not None:
                self.num_steps_ahead += 1
        self._inflight, failed_sampling = self._queue_sampling(launched)  # the matchers are current now
        if self.pacer is not None and self._inflight is not None and launched is not None:
            self.pacer.launched(self.runner.last_forward_path, launched[0].num_batched_tokens, t_launch)
        return self._merge_outputs(done, failed or failed_sampling)

    def launch_hold_until(self, now: float) -> float | None:
        """Until when a server's loop may keep admitting requests before its next ``step()`` (None: call it now):
        the pacer's answer (engine/launch_pacing.py) while a step is in flight, no grammar is compiling and a new
        request could still join the next step (``Scheduler.room_for_arrival``: a seat and token budget left after
        the requests already waiting; a hold helps only a request that can join). Requests already waiting lose
        nothing by a hold: the next step starts on the device when the one in flight ends either way."""
        if (self.pacer is None or self._inflight is None or self._grammar_waiting
                or not self.scheduler.room_for_arrival()):
            return None
        return self.pacer.hold_until(now)

    def _step_with_batch_queue(self) -> EngineCoreOutputs:
        """Pipeline parallelism: launch a new step while the queue has room (the scheduler leaves out requests
        already in flight); return at once while the queue fills, else wait for the oldest step and return its
        outputs. Steps complete in launch order."""
        failed = None
        if len(self._batch_queue) < self.cfg.pipeline_parallel_size:
            launched, failed = self._schedule_and_launch()
            if launched is not None:
                self._batch_queue.append(launched)
                if len(self._batch_queue) < self.cfg.pipeline_parallel_size:
                    return self._merge_outputs(None, failed)
        done = self._complete(*self._batch_queue.popleft()) if self._batch_queue else None
        return self._merge_outputs(done, failed)

    def _step_sync(self) -> EngineCoreOutputs:
        launched, failed = self._schedule_and_launch()
        if launched is None:
            return failed if failed is not None else EngineCoreOutputs(stats=self.stats())
        return self._complete(*launched)

    def _finish_inflight_if_host_history_needed(self) -> EngineCoreOutputs | None:
        """Complete the step in flight now if a request in it samples from its host-side history
        (its next step must see the token): otherwise None.

        Speculating, every step is completed here, before the next is scheduled (the proposals need the
        accepted tokens): the next step is launched in between the update and the building of the outputs
        (:meth:`_outputs`), so the device waits only for what the next step's inputs depend on."""
        if self._inflight is None:
            return None
        can_defer = self._can_defer
        if not (self.spec is not None or any(
            s.sample and (needs_host_history(s.request) or (s.request.grammar is not None and not can_defer))
            for s in self._inflight[0].scheduled
        )):
            return None
        sched, handle = self._inflight
        self._inflight = None
        done = self._update(sched, handle)
        if isinstance(done, EngineCoreOutputs):
            return done
        if self.spec is None:
            return self._outputs(sched, done)
        launched, failed = self._schedule_and_launch()
        self._inflight = launched
        return self._merge_outputs(self._outputs(sched, done), failed)

    @property
    def _can_defer(self) -> bool:
        """Whether a constrained step can launch its forward before its bitmask exists (see the module docstring)."""
        return self.spec is None and self.runner.can_defer_sampling

    def _schedule_and_launch(self) -> tuple[Launched | None, EngineCoreOutputs | None]:
        """Schedule and launch the next step: (the launched step or None, the outputs of a failed launch or None)."""
        launched, failed = self._schedule_and_launch_split()
        if failed is not None:
            return None, failed
        return self._queue_sampling(launched)

    def _schedule_and_launch_split(
        self,
    ) -> tuple[tuple[SchedulerOutput, StepHandle | PendingSample] | None, EngineCoreOutputs | None]:
        """As :meth:`_schedule_and_launch`, but a split step (see :meth:`_launch`) comes back with its sampling
        still to queue (:meth:`_queue_sampling`)."""
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return None, None
        launched = self._launch(sched)
        if isinstance(launched, EngineCoreOutputs):
            return None, launched
        return (sched, launched), None

    def _queue_sampling(self, launched: tuple[SchedulerOutput, StepHandle | PendingSample] | None,
                        ) -> tuple[Launched | None, EngineCoreOutputs | None]:
        """Queue a split step's sampling: fill its bitmask from the matchers (they hold every earlier token by
        now) while the device runs its forward. Other steps pass through."""
        if launched is None:
            return None, None
        sched, pending = launched
        if not isinstance(pending, PendingSample):
            return (sched, pending), None
        try:
            sched.grammar_bitmask = self.structured.grammar_bitmask(sched)
            return (sched, self.runner.sample_async(pending)), None
        except EngineFatalError:
            raise
        except Exception as e:
            return None, self._fail(sched, e)

    def _merge_outputs(self, done: EngineCoreOutputs | None, failed: EngineCoreOutputs | None) -> EngineCoreOutputs:
        """One step's result: the completed step's outputs (and token counts), then a failed launch's."""
        outs = done.outputs if done is not None else []
        if failed is not None:
            outs = outs + failed.outputs
        stats = self.stats()
        if done is not None and done.stats is not None:
            stats.num_prompt_tokens = done.stats.num_prompt_tokens
            stats.num_generation_tokens = done.stats.num_generation_tokens
        return EngineCoreOutputs(outs, stats)

    def _launch(self, sched: SchedulerOutput) -> StepHandle | PendingSample | EngineCoreOutputs:
        """Launch a scheduled step; a failure fails its requests (not the engine) and returns their outputs.
        A step with a constrained request launches its forward only, when the runner can split it."""
        block_ids = {s.request.request_id: self.kv.get_block_ids(s.request.request_id) for s in sched.scheduled}
        handle: StepHandle | PendingSample
        try:
            if self._can_defer and any(s.sample and s.request.grammar is not None for s in sched.scheduled):
                handle = self.runner.forward_async(sched, block_ids, self.kv.req_epoch)
            else:
                sched.grammar_bitmask = self.structured.grammar_bitmask(sched)
                handle = self.runner.execute_async(sched, block_ids, self.kv.req_epoch)
        except EngineFatalError:
            raise
        except Exception as e:
            return self._fail(sched, e, copies_lost=True)
        if self.step_timeline is not None:  # pipeline stages run eager (no graphs are captured)
            pp = self.cfg.pipeline_parallel_size > 1
            self.step_timeline.launched(sched, "eager" if pp else self.runner.last_forward_path)
        return handle

    def _fail(self, sched: SchedulerOutput, e: Exception, copies_lost: bool = False) -> EngineCoreOutputs:
        """Fail the step's requests (not the engine), and every other request holding a block whose K/V the step
        was to write: one it registered in the prefix cache or loaded from the host tier, which a request of the
        step scheduled after it (async scheduling) may have taken as a prefix-cache hit and would read unwritten.
        ``copies_lost``: the launch failed, perhaps before the runner applied the step's copy-on-write block
        copies, which the scheduler hands out once: a parallel-sampling fork waiting for its tail block's copy,
        in this step or not, fails too, rather than go on from a block that holds another request's K/V or
        none."""
        logger.exception("model step failed")
        ids = [s.request.request_id for s in sched.scheduled if not s.request.status.finished]
        unwritten = {b for s in sched.scheduled for b in s.registered_blocks}
        unwritten.update(dst for _, dst in sched.swap_in)
        if copies_lost:
            unwritten.update(dst for _, dst in sched.block_copies)
        if unwritten:
            taken = set(ids)
            ids += [rid for rid, blocks in self.kv.req_blocks.items()
                    if rid not in taken and unwritten.intersection(blocks)]
        self.scheduler.abort_requests(ids, RequestStatus.FINISHED_ERROR)
        # Blocks are registered in the prefix cache when scheduled: those this step was to write
        # hold no valid K/V. Its requests are gone, so forgetting unheld blocks drops them.
        self.kv.reset_prefix_cache()
        return EngineCoreOutputs(
            [EngineCoreOutput(rid, [], finish_reason="error", error=f"internal error: {e}") for rid in ids],
            self.stats(),
        )

    def _complete(self, sched: SchedulerOutput, handle: StepHandle) -> EngineCoreOutputs:
        """Wait for a launched step, update the scheduler, and build the step's outputs."""
        done = self._update(sched, handle)
        return done if isinstance(done, EngineCoreOutputs) else self._outputs(sched, done)

    def _update(self, sched: SchedulerOutput, handle: StepHandle) -> _Updated | EngineCoreOutputs:
        """Wait for a launched step and update the scheduler (and the grammars, and the proposals) from it:
        everything the next step's scheduling depends on. A failed step: its requests' outputs."""
        try:
            res = self._result(handle)
        except EngineFatalError:
            raise
        except Exception as e:  # a failing step fails the requests in it, not the engine
            return self._fail(sched, e)
        # Requests that ended while the step was in flight (aborted, or stopped by the
        # previous step's token) get nothing from it.
        gone = {s.request.request_id for s in sched.scheduled if s.request.status.finished}
        banned = _banned_draws(sched, res.sampled, gone)  # (read before the tokens are appended)
        finished = {r.request_id for r in self.scheduler.update_from_output(sched, res.sampled)}
        grammar_errors = self._advance_grammars(sched, res.sampled, gone | banned.keys())
        for rid, (error, req) in banned.items():
            self._fail_request(req)
            grammar_errors[rid] = error
        if self.spec is not None:
            self.spec.propose(self.scheduler.running, res.spec_hidden)
        return _Updated(res, gone, finished, grammar_errors)

    def _outputs(self, sched: SchedulerOutput, done: _Updated) -> EngineCoreOutputs:
        """An updated step's outputs. Reads only what a later ``schedule()`` leaves alone (the kept tokens,
        the finished requests' reasons), so it may run after the next step is launched."""
        res, gone, finished, grammar_errors = done.res, done.gone, done.finished, done.grammar_errors
        outs = []
        prompt_tokens = 0
        generated = 0
        for s in sched.scheduled:
            req = s.request
            rid = req.request_id
            if rid in gone:
                continue
            plp = res.prompt_logprobs.get(rid)
            if not s.sample:
                prompt_tokens += s.num_new_tokens
                if plp is not None:
                    outs.append(EngineCoreOutput(rid, [], prompt_logprobs=_prompt_logprobs(plp)))
                continue
            pooled = res.pooled.get(rid)
            if pooled is not None:
                prompt_tokens += s.num_new_tokens
                outs.append(EngineCoreOutput(rid, [], finish_reason="stop", pooled=PooledData(
                    pooled.numpy().astype("<f4").tobytes(), list(pooled.shape))))
                continue
            toks = res.sampled[rid]
            first = req.num_output_tokens <= len(toks)  # this step gave the first output: it ended the prompt
            if first:
                prompt_tokens += s.num_new_tokens
            generated += len(toks)
            lps = res.logprobs.get(rid)
            outs.append(
                EngineCoreOutput(
                    rid,
                    toks,
                    new_logprobs=[TokenLogprobs(*lp) for lp in lps[: len(toks)]] if lps is not None else None,
                    prompt_logprobs=_prompt_logprobs(plp) if plp else None,
                    finish_reason="error" if rid in grammar_errors else (
                        req.status.finish_reason if rid in finished else None),
                    stop_reason=req.stop_reason if rid in finished else None,
                    num_cached_tokens=max(0, req.num_cached_tokens),
                    error=grammar_errors[rid][0] if rid in grammar_errors else None,
                    error_param=grammar_errors[rid][1] if rid in grammar_errors else None,
                    first_scheduled_time=_wall_time(req.first_scheduled_time) if first else None,
                )
            )
        stats = self.stats()
        stats.num_prompt_tokens = prompt_tokens
        stats.num_generation_tokens = generated
        return EngineCoreOutputs(outs, stats)

    def _result(self, handle: StepHandle) -> RunnerOutput:
        """Wait for a launched step's result; the wait is recorded in the step timeline when one is attached, and
        the step's end reported to the launch pacer when there is one."""
        tl, pacer = self.step_timeline, self.pacer
        if tl is None and pacer is None:
            return handle.result()
        t = time.perf_counter()
        try:
            res = handle.result()
        except BaseException:
            if pacer is not None:
                pacer.forget()
            raise
        finally:
            if tl is not None:
                tl.waited(time.perf_counter() - t)
        if pacer is not None:  # the step's end: when the wait for the device ended, not after the token lists
            pacer.completed(handle.done_at if handle.done_at is not None else time.perf_counter())
        return res

    def _advance_grammars(self, sched: SchedulerOutput, sampled: dict[str, list[int]],
                          gone: set[str]) -> dict[str, tuple[str, str]]:
        """Advance each constrained request's matcher by its kept tokens. A token the grammar refuses (only
        possible when another rule, e.g. min_tokens, banned every token it allowed) fails the request, as its
        own fault: returns request id -> (error, the request field to blame, :func:`_conflicting_rule`)."""
        errors: dict[str, tuple[str, str]] = {}
        for s in sched.scheduled:
            req = s.request
            g = req.grammar
            if g is None or not s.sample or req.request_id in gone:
                continue
            toks = sampled.get(req.request_id, [])
            if g.accept_tokens(toks) < len(toks):
                rule = _conflicting_rule(req)
                errors[req.request_id] = (f"{rule} excluded every token the {g.key.kind} constraint allows at output "
                                          f"token {req.num_output_tokens} (token {toks[-1]} was drawn); the two "
                                          f"cannot both hold: relax {rule} or the constraint.", rule)
                self._fail_request(req)
        return errors

    def _fail_request(self, req: Request) -> None:
        """End ``req`` as an error of its own (its rules conflict), also when this step's token already finished it."""
        if not req.status.finished:
            self.scheduler.abort_requests([req.request_id], RequestStatus.FINISHED_ERROR)
        req.status = RequestStatus.FINISHED_ERROR

    def stats(self) -> SchedulerStats:
        running_loras, waiting_loras = self._lora_counts()
        return SchedulerStats(
            num_running=len(self.scheduler.running),
            num_waiting=self.scheduler.num_waiting + len(self._grammar_waiting),
            num_waiting_deferred=self.scheduler.num_lora_deferred() + len(self._grammar_waiting),
            kv_cache_usage=self.kv.usage(),
            num_preemptions=self.scheduler.num_preemptions_total,
            prefix_cache_queries=self.kv.prefix_cache_queries,
            prefix_cache_hits=self.kv.prefix_cache_hits,
            external_prefix_cache_queries=self.kv.external_prefix_cache_queries,
            external_prefix_cache_hits=self.kv.external_prefix_cache_hits,
            cpu_kv_cache_usage=self.kv.host.usage() if self.kv.host else 0.0,
            kv_offload_stored_blocks=self.kv.host.num_stored if self.kv.host else 0,
            kv_offload_loaded_blocks=self.kv.host.num_loaded if self.kv.host else 0,
            **spec_stats_fields(self.scheduler.spec_stats),
            running_lora_adapters=running_loras, waiting_lora_adapters=waiting_loras,
        )

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix block nobody holds (vLLM's ``reset_prefix_cache``).

        The host KV tier, when on, is emptied too. True when the device prefix cache is
        empty afterwards; False when blocks of running requests stay registered (they
        become forgettable once those requests finish).
        """
        dropped = self.kv.reset_prefix_cache()
        ok = self.kv.pool.num_cached_blocks == 0
        logger.info("prefix cache reset: %d cached blocks dropped%s", dropped,
                    "" if ok else f", {self.kv.pool.num_cached_blocks} still held by running requests")
        return ok

    def check_integrity(self) -> None:
        self.scheduler.check_integrity()

    def shutdown(self) -> None:
        """Drop the step in flight, the model, KV caches and CUDA graphs, and give the device's
        cached memory back. Idempotent; the core cannot run steps afterwards."""
        self._inflight = None
        self._batch_queue.clear()
        self.structured.shutdown()
        self.runner.shutdown()
        release_device_memory(self.cfg.device)


@dataclass
class _Updated:
    """A completed step, the scheduler updated from it, its outputs not built yet (:meth:`EngineCore._outputs`)."""

    res: RunnerOutput
    gone: set[str]  # requests that ended while the step was in flight: nothing from it counts
    finished: set[str]  # requests the step finished
    grammar_errors: dict[str, tuple[str, str]]  # request id -> (error, the request field to blame)


def _banned_draws(sched: SchedulerOutput, sampled: dict[str, list[int]],
                  gone: set[str]) -> dict[str, tuple[tuple[str, str], Request]]:
    """Requests that drew a token their own rules forbid (``allowed_token_ids``, ``min_tokens``' EOS and stop ids,
    ``bad_words``): only possible when those rules together banned every token at that position, so the sampler met
    a row of -inf logits and took its first index. Each is an error of the request (vLLM emits the token): request
    id -> ((error, the field to blame: the first of :func:`_token_rules`), the request). Read before the step's
    tokens are appended (positions count from the request's outputs so far)."""
    from pagoda.layers.sampler import bad_word_bans

    out: dict[str, tuple[tuple[str, str], Request]] = {}
    for s in sched.scheduled:
        req = s.request
        p = req.sampling_params
        if not s.sample or req.request_id in gone or req.pooling_params is not None or \
                (p.allowed_token_ids is None and not p.min_tokens and not p.bad_words_token_ids):
            continue
        done = req.output_token_ids
        toks = sampled.get(req.request_id, [])
        # bad_words look at most their length - 1 tokens back
        back = max(map(len, p.bad_words_token_ids)) - 1 if p.bad_words_token_ids else 0
        for j, t in enumerate(toks):
            pos = len(done) + j
            if (req.allowed_token_set is not None and t not in req.allowed_token_set) or \
                    (p.min_tokens and pos < p.min_tokens and t in req.min_tokens_banned) or \
                    (p.bad_words_token_ids and
                     t in bad_word_bans(p.bad_words_token_ids, (done[-back:] if back else []) + toks[:j])):
                rules = _token_rules(req, pos)
                rule = rules[0]
                g = req.grammar  # a constrained request: as _advance_grammars words it, the constraint named
                within = f" the {g.key.kind} constraint allows" if g is not None else ""
                out[req.request_id] = ((f"{' and '.join(rules)} excluded every token{within} at output token {pos} "
                                        f"(the sampler had none left and took token {t}); relax {rule}"
                                        f"{' or the constraint' if g is not None else ''}.", rule), req)
                break
    return out


def _token_rules(req: Request, pos: int) -> list[str]:
    """The request's fields that ban tokens at output position ``pos``, most to blame first: ``min_tokens`` while it
    holds (it bans the stop tokens), then ``allowed_token_ids`` and ``bad_words`` where set."""
    p = req.sampling_params
    rules = ["min_tokens"] if p.min_tokens and pos < p.min_tokens else []
    return rules + [name for name in ("allowed_token_ids", "bad_words") if getattr(p, name, None)]


def _conflicting_rule(req: Request) -> str:
    """The sampling field that can ban tokens a grammar needs, named for a constrained request whose every allowed
    token was banned at its last output token: the first of :func:`_token_rules`, else ``logit_bias`` where set,
    else the constraint itself."""
    rules = _token_rules(req, req.num_output_tokens - 1)
    if rules:
        return rules[0]
    return "logit_bias" if req.sampling_params.logit_bias else STRUCTURED_FIELD


def _prompt_logprobs(c: PromptLogprobChunk) -> PromptLogprobs:
    return PromptLogprobs(c.start_index, c.logprobs, c.ranks, c.top_ids, c.top_logprobs)


def _wall_time(monotonic_t: float | None) -> float | None:
    """A ``time.monotonic()`` instant of this process as ``time.time()`` (RequestMetrics' clock)."""
    return None if monotonic_t is None else time.time() - (time.monotonic() - monotonic_t)
