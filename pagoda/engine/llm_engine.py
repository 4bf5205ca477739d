"""The synchronous engine: input processor + in-process engine core + output processor."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from pagoda.config import EngineArgs, EngineConfig
from pagoda.engine import admission
from pagoda.engine.core import EngineCore
from pagoda.engine.input_processor import InputProcessor, PromptType
from pagoda.engine.messages import EngineCoreOutput, SchedulerStats
from pagoda.engine.output_processor import OutputProcessor, ParentState
from pagoda.engine.request_stats import ChildTimes, finished_stats
from pagoda.engine.tokenization_kwargs import apply_tokenization_kwargs
from pagoda.engine.tokenizer import eos_token_ids, load_tokenizer
from pagoda.errors import ValidationError
from pagoda.lora.request import LoRARequest, check_lora_request
from pagoda.outputs import RequestOutput
from pagoda.pooling.params import PoolingParams
from pagoda.sampling_params import SamplingParams
from pagoda.worker.cpu_threads import apply_runtime_policy

logger = logging.getLogger("pagoda")


@dataclass
class Metric:
    """vLLM's ``vllm.v1.metrics.reader.Metric``: one series of a metric (its name, with the ``vllm:`` prefix, and
    labels)."""

    name: str
    labels: dict[str, str]


@dataclass
class Counter(Metric):
    """A monotonically increasing integer counter (the name without ``_total``)."""

    value: int


@dataclass
class Vector(Metric):
    """Integer counters by position (``vllm:spec_decode_num_accepted_tokens_per_pos``)."""

    values: list[int]


@dataclass
class Gauge(Metric):
    value: float


@dataclass
class Histogram(Metric):
    """``buckets``: upper limit (``le``, "+Inf" included) -> cumulative count; ``count`` equals the "+Inf" one."""

    count: int
    sum: float
    buckets: dict[str, int]


class OfflineStats:
    """vLLM's stats for the in-process engine (``LLM(disable_log_stats=False)``), fed from its steps into the
    server's stat loggers: :class:`~pagoda.entrypoints.openai.metrics.PrometheusStatLogger` (prefix ``vllm:``, its
    own registry; the same series, buckets and request timings as ``/metrics``, times from the core's
    first-scheduled time and the outputs' arrival in :meth:`LLMEngine.step`) and the periodic stats log line
    (:class:`~pagoda.entrypoints.openai.metrics.LoggingStatLogger`, as vLLM's LLM logs it)."""

    def __init__(self, engine: LLMEngine) -> None:
        from pagoda.entrypoints.openai.metrics import (
            LoggingStatLogger,
            PrometheusStatLogger,
            cache_config_info,
            num_speculative_tokens,
        )

        cfg = engine.cfg
        ready = SimpleNamespace(ready_info=SimpleNamespace(num_blocks=engine.core.num_blocks))
        self.logger = PrometheusStatLogger(cfg.served_model_name[0], cfg.max_model_len, "vllm",
                                           cache_config_info(cfg, ready), num_speculative_tokens(cfg),
                                           max_loras=cfg.lora.max_loras if cfg.lora is not None else None)
        self.log_line = LoggingStatLogger(kv_offload=bool(cfg.kv_offloading_size))
        self.times: dict[str, ChildTimes] = {}  # per engine request (sample), until it is reported finished
        self.max_model_len = cfg.max_model_len

    def on_outputs(self, outputs: list[EngineCoreOutput], op: OutputProcessor, now: float) -> dict[str, ParentState]:
        """Record one step's token times (before the output processor applies them); returns the parents concerned
        (kept, as a finished one leaves the output processor)."""
        parents: dict[str, ParentState] = {}
        for o in outputs:
            pid = op.child_to_parent.get(o.request_id)
            if pid is None:
                continue
            parent = parents[pid] = op.parents[pid]
            t = self.times.setdefault(o.request_id, ChildTimes())
            if o.first_scheduled_time is not None and t.scheduled_at is None:
                t.scheduled_at = o.first_scheduled_time
                t.queued_s = max(0.0, o.first_scheduled_time - parent.metrics.arrival_time)
            if o.new_token_ids:
                if t.first_token_at is None:
                    t.first_token_at = now
                    self.logger.on_first_token(max(0.0, now - parent.metrics.arrival_time))
                elif t.last_token_at is not None:
                    self.logger.on_inter_token(now - t.last_token_at)
                t.last_token_at = now
        return parents

    def on_finished(self, parent: ParentState, reason: str | None = None) -> None:
        """Report a finished (or aborted: ``reason`` "abort" for the samples still running) user request."""
        p = parent.params
        max_tokens = None if parent.pooling else \
            p.max_tokens if p.max_tokens is not None else self.max_model_len - len(parent.prompt_token_ids)
        now = time.time()
        for cid, child in parent.children.items():
            stats = finished_stats(self.times.pop(cid, None), now, parent.metrics.arrival_time,
                                   child.finish_reason or reason or "abort", len(parent.prompt_token_ids),
                                   len(child.token_ids), max_tokens, parent.num_cached_tokens)
            self.logger.on_finished(stats)
        longest = max((len(c.token_ids) for c in parent.children.values()), default=0)
        self.logger.on_request_finished(p.n, longest)

    def snapshot(self) -> list[Metric]:
        """Every ``vllm:`` series now, as vLLM's ``get_metrics_snapshot`` reads them."""
        out: list[Metric] = []
        for fam in self.logger.registry.collect():
            if not fam.name.startswith("vllm:"):
                continue
            if fam.type == "gauge":
                out += [Gauge(fam.name, dict(s.labels), s.value) for s in fam.samples if s.name == fam.name]
            elif fam.type == "counter":
                samples = [s for s in fam.samples if s.name == fam.name + "_total"]
                if fam.name.endswith("spec_decode_num_accepted_tokens_per_pos"):
                    out += _vectors(fam.name, samples)
                else:
                    out += [Counter(fam.name, dict(s.labels), int(s.value)) for s in samples]
            elif fam.type == "histogram":
                out += _histograms(fam.name, fam.samples)
        return out


def _key(labels: dict[str, str], drop: str) -> frozenset[tuple[str, str]]:
    return frozenset((k, v) for k, v in labels.items() if k != drop)


def _vectors(name: str, samples: list[Any]) -> list[Metric]:
    """Counters labelled ``position`` as one Vector per other label set (vLLM's reader)."""
    by: dict[frozenset, dict[int, int]] = {}
    for s in samples:
        by.setdefault(_key(s.labels, "position"), {})[int(s.labels["position"])] = int(s.value)
    out: list[Metric] = []
    for key, vals in by.items():
        values = [0] * (max(vals) + 1)
        for i, v in vals.items():
            values[i] = v
        out.append(Vector(name, dict(key), values))
    return out


def _histograms(name: str, samples: list[Any]) -> list[Metric]:
    """A histogram family's ``_bucket`` / ``_count`` / ``_sum`` samples as one Histogram per label set."""
    buckets: dict[frozenset, dict[str, int]] = {}
    counts: dict[frozenset, int] = {}
    sums: dict[frozenset, float] = {}
    for s in samples:
        if s.name == name + "_bucket":
            buckets.setdefault(_key(s.labels, "le"), {})[s.labels["le"]] = int(s.value)
        elif s.name == name + "_count":
            counts[_key(s.labels, "")] = int(s.value)
        elif s.name == name + "_sum":
            sums[_key(s.labels, "")] = float(s.value)
    return [Histogram(name, dict(k), counts.get(k, 0), sums.get(k, 0.0), b) for k, b in buckets.items()]


class LLMEngine:
    def __init__(self, cfg: EngineConfig, log_stats: bool = False) -> None:
        """``log_stats``: keep vLLM's metrics (:meth:`get_metrics`), as vLLM's ``disable_log_stats=False``."""
        if cfg.device.type == "cpu":
            apply_runtime_policy()  # torch may have been imported before pagoda: fix what can be fixed
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg)
        self.core = EngineCore(cfg)
        self.input_processor = InputProcessor(cfg, self.tokenizer, eos_token_ids(cfg, self.tokenizer),
                                              self.core.admission_limits(), cap_to_context=True)
        self.output_processor = OutputProcessor(self.tokenizer, cfg.stream_interval)
        self._ids = itertools.count()
        self.last_stats = SchedulerStats()
        self._shut_down = False
        self.stats: OfflineStats | None = None
        if log_stats:
            self.stats = OfflineStats(self)
        self._profiler: Any = None

    def shutdown(self) -> None:
        """Free the model, KV caches and CUDA graphs (device memory included); requests still
        queued are dropped. Idempotent; the engine refuses work afterwards."""
        if self._shut_down:
            return
        self._shut_down = True
        self.core.shutdown()

    def _check_open(self) -> None:
        if self._shut_down:
            raise RuntimeError("This engine was shut down (LLM.shutdown() / LLMEngine.shutdown()); create a new "
                               "LLM or LLMEngine.")

    @classmethod
    def from_engine_args(cls, args: EngineArgs, log_stats: bool = False) -> LLMEngine:
        args.validate()
        if args.data_parallel_size != 1:
            dp = args.data_parallel_size
            raise ValueError(f"data_parallel_size={dp} (--data-parallel-size): the offline engine (LLM, pagoda bench "
                             f"throughput / latency, pagoda chat) runs one engine in this process; serve replicas "
                             f"with `pagoda serve --data-parallel-size {dp}`, or start one LLM per replica (on GPU "
                             f"each in its own process with its own CUDA_VISIBLE_DEVICES).")
        return cls(args.create_config(), log_stats)

    def next_request_id(self) -> str:
        return str(next(self._ids))

    def add_request(
        self, request_id: str, prompt: PromptType, params: SamplingParams | PoolingParams | None = None, *,
        final_only: bool = False, priority: int = 0, lora_request: LoRARequest | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Validate and queue a request. Raises ``ValidationError`` (nothing queued) if invalid.

        ``step()`` reports it as ``params.output_kind`` says (CUMULATIVE, DELTA or FINAL_ONLY). ``final_only``:
        only once, when it finishes, whatever the kind. ``priority``: lower is served first under
        ``--scheduling-policy priority`` (must be 0 under fcfs). ``lora_request``: the LoRA adapter to run with
        (an engine started with ``enable_lora``); a bad adapter raises ``ValidationError`` naming ``lora_request``.
        ``tokenization_kwargs``: vLLM's (:func:`~pagoda.engine.tokenization_kwargs.apply_tokenization_kwargs`).
        """
        self._check_open()
        admission.check_request_id_free(request_id, request_id in self.output_processor.parents)
        prompt = apply_tokenization_kwargs(prompt, tokenization_kwargs, self.tokenizer, self.cfg.max_model_len)
        if isinstance(params, PoolingParams):
            if lora_request is not None:
                raise ValidationError("lora_request: pooling requests take no LoRA adapter; pass None.",
                                      "lora_request")
            text, ids, core_req = self.input_processor.process_pooling(request_id, prompt, params, priority)
            self.core.add_request(core_req)
            self.output_processor.add_request(request_id, text, ids, core_req.sampling_params, final_only,
                                              pooling=True)
            return
        text, ids, params, core_reqs = self.input_processor.process(request_id, prompt, params, priority, lora_request)
        # a sample's id ("1_x" of an n > 1 "x") may be another live request's id, or this request's id a sample's
        taken = [r.request_id for r in core_reqs if r.request_id in self.output_processor.child_to_parent]
        if taken:
            raise ValidationError(f"request id {request_id!r}: the engine id {taken[0]!r} is already in use by "
                                  f"another request or its samples; choose another request id", "request_id")
        added: list[str] = []
        try:
            for r in core_reqs:
                self.core.add_request(r)
                added.append(r.request_id)
        except Exception:
            self.core.abort_requests(added)
            raise
        self.output_processor.add_request(request_id, text, ids, params, final_only, lora_request=lora_request)

    def abort_request(self, request_ids: str | list[str]) -> None:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for rid in request_ids:
            parent = self.output_processor.parents.get(rid)
            children = self.output_processor.abort(rid)
            self.core.abort_requests(children)
            if self.stats is not None and parent is not None and children:
                self.stats.on_finished(parent, "abort")

    def step(self) -> list[RequestOutput]:
        self._check_open()
        outs = self.core.step()
        if outs.stats is not None:
            self.last_stats = outs.stats
        st = self.stats
        parents = st.on_outputs(outs.outputs, self.output_processor, time.time()) if st is not None else {}
        results, to_stop = self.output_processor.process(outs.outputs)
        if to_stop:
            self.core.finish_requests(to_stop)
        if st is not None:
            if outs.stats is not None:
                st.logger.on_step(outs.stats)
                st.log_line.on_step(outs.stats)
            st.logger.on_tokens(*self.output_processor.take_token_counts())
            for res in results:
                if res.finished and res.request_id in parents:
                    st.on_finished(parents[res.request_id])
        return results

    def get_metrics(self) -> list[Metric]:
        """vLLM's ``get_metrics``: a snapshot of vLLM's metrics (``vllm:`` names; :class:`Counter`, :class:`Gauge`,
        :class:`Histogram`, :class:`Vector`). Needs the engine built with ``log_stats`` (``LLM(...,
        disable_log_stats=False)``); raises ``RuntimeError`` saying so otherwise."""
        if self.stats is None:
            raise RuntimeError("get_metrics() needs the engine's stats: create the LLM with disable_log_stats=False "
                               "(as vLLM's LLM.get_metrics).")
        return self.stats.snapshot()

    def collective_rpc(self, method: str | Callable[..., Any], timeout: float | None = None, args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list[Any]:
        """vLLM's ``collective_rpc`` on the in-process engine: its one worker is the model runner in this process,
        so ``method`` (a callable taking the runner first, or the name of a runner method) runs here, on it, and
        the result comes back in a list of one. No pickling; ``timeout`` only None (the call runs in this thread).
        Refused under tensor / pipeline parallelism (the other ranks run in their own processes)."""
        self._check_open()
        if timeout is not None:
            raise ValueError(f"collective_rpc(timeout={timeout!r}): the in-process engine runs the call in this "
                             f"thread and cannot time it out; pass None.")
        if self.cfg.tensor_parallel_size * self.cfg.pipeline_parallel_size > 1:
            raise ValueError("collective_rpc / apply_model: pagoda runs them only on the in-process worker of a "
                             "single-device engine (tensor_parallel_size = pipeline_parallel_size = 1); the other "
                             "ranks of this engine run in their own processes.")
        runner = self.core.runner
        if isinstance(method, str):
            fn = getattr(runner, method, None)
            if fn is None or not callable(fn) or method.startswith("_"):
                raise ValueError(f"collective_rpc: the worker (pagoda's ModelRunner) has no public method "
                                 f"{method!r}.")
            return [fn(*args, **(kwargs or {}))]
        if not callable(method):
            raise TypeError(f"collective_rpc: method must be a method name or a callable, got "
                            f"{type(method).__name__}.")
        return [method(runner, *args, **(kwargs or {}))]

    def apply_model(self, func: Callable[[Any], Any]) -> list[Any]:
        """vLLM's ``apply_model``: ``func(model)`` on the worker's model (the ``torch.nn.Module`` the runner
        executes), in a list of one; as :meth:`collective_rpc`."""
        return self.collective_rpc(lambda runner: func(runner.model))

    def start_profile(self) -> None:
        """vLLM's ``start_profile``: a ``torch.profiler`` trace of the engine's steps from now to
        :meth:`stop_profile`, written (TensorBoard / Chrome trace) to ``$VLLM_TORCH_PROFILER_DIR``, vLLM's
        variable. Raises ``RuntimeError`` when it is unset or a profile is running."""
        import os

        out = os.environ.get("VLLM_TORCH_PROFILER_DIR")
        if not out:
            raise RuntimeError("start_profile() needs VLLM_TORCH_PROFILER_DIR (a folder for the traces), as vLLM's "
                               "torch profiler; pagoda has no --profiler-config.")
        if self._profiler is not None:
            raise RuntimeError("A profile is running already; call stop_profile() first.")
        import torch

        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.cfg.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=acts, record_shapes=True, with_stack=False,
                                      on_trace_ready=torch.profiler.tensorboard_trace_handler(out, use_gzip=True))
        prof.start()
        self._profiler = prof

    def stop_profile(self) -> None:
        """vLLM's ``stop_profile``: end the trace :meth:`start_profile` began and write it. Raises ``RuntimeError``
        when none is running."""
        if self._profiler is None:
            raise RuntimeError("No profile is running; call start_profile() first.")
        prof, self._profiler = self._profiler, None
        prof.stop()

    def reset_prefix_cache(self) -> bool:
        """Drop cached prefix blocks nobody holds; True when the prefix cache is empty afterwards."""
        done = self.core.reset_prefix_cache()
        if self.stats is not None:
            self.stats.log_line.on_prefix_cache_reset()
        return done

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """vLLM's ``add_lora``: read and check the adapter now and keep it loaded. Raises ``ValueError`` naming the
        adapter and the problem (also without ``enable_lora``); True otherwise."""
        self._check_open()
        check_lora_request(lora_request, self.cfg.lora is not None)
        assert lora_request is not None
        return self.core.add_lora(lora_request)

    def remove_lora(self, lora_id: int) -> bool:
        """vLLM's ``remove_lora``: drop the adapter from the host cache; True if it was loaded."""
        self._check_open()
        return self.core.remove_lora(lora_id)

    def list_loras(self) -> set[int]:
        """vLLM's ``list_loras``: ids of the adapters loaded in host memory."""
        return self.core.list_loras()

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished() or self.core.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        """User requests added and not yet finished nor aborted (vLLM's; a request with ``n > 1`` counts once)."""
        return len(self.output_processor.parents)

    def get_tokenizer(self) -> Any:
        return self.tokenizer
