"""``AsyncLLM``: the asyncio front end of an engine core running in its own process.

It mirrors :class:`pagoda.engine.llm_engine.LLMEngine` (input processor → core →
output processor), with the core behind ZMQ (see :mod:`pagoda.engine.core_proc`):

* ``add_request`` tokenizes and admits in the caller's task (a bad request raises
  :class:`pagoda.errors.ValidationError` before anything is queued), then sends ``AddRequest``
  messages; the admission limits (context, vocabulary, KV capacity) come from the core's ``Ready``;
* one task receives the core's per-step output batches, detokenizes them (stop strings
  included) and hands each request's newest cumulative ``RequestOutput`` to its
  :class:`RequestStream`; a slow consumer gets the latest state, never a backlog;
* leaving a stream before it finished (client disconnect, cancellation, error) aborts
  the request in the core, which frees its KV blocks at once;
* a watchdog marks the engine dead when the core process exits, and *stuck* while
  requests are pending and the core has sent nothing for ``stuck_timeout_s``.

Data parallelism (``--data-parallel-size N``, :mod:`pagoda.engine.core_engines`): N engine cores,
each a full replica. A new request goes to the least-loaded one (:class:`pagoda.engine.dp_lb.LoadBalancer`;
the ``n`` samples of one request stay together, they share prompt blocks), and every later message
about it (abort, finish) goes to the core that owns it (``_owner``). Stats reach the stat loggers per
replica (``engine=i``); ``last_stats`` is their sum. Any replica that dies is the engine's death: every
request in flight fails with :class:`EngineDeadError` and ``/health`` says which replica died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from pagoda import envs
from pagoda.config import EngineArgs, EngineConfig
from pagoda.engine import admission
from pagoda.engine.core_engines import CoreEngines
from pagoda.engine.core_proc import Attach
from pagoda.engine.dp_lb import LoadBalancer, sum_stats
from pagoda.engine.input_processor import InputProcessor, PromptType
from pagoda.engine.messages import (
    AbortRequests,
    AddLora,
    AddRequest,
    CoreFailed,
    EngineCoreOutput,
    FinishRequests,
    Heartbeat,
    ListLoras,
    LoraAnswer,
    PrefixCacheReset,
    Ready,
    Rejected,
    RemoveLora,
    ResetPrefixCache,
    SchedulerStats,
    Shutdown,
    StepOutputs,
    encoder,
    output_decoder,
)
from pagoda.engine.output_processor import OutputProcessor, ParentState, merge_delta
from pagoda.engine.prelaunch import PrelaunchedCore
from pagoda.engine.request_stats import ChildTimes, FinishedRequestStats, RequestTrace, finished_stats
from pagoda.engine.tokenization_kwargs import apply_tokenization_kwargs
from pagoda.engine.tokenizer import eos_token_ids, load_tokenizer
from pagoda.errors import ValidationError
from pagoda.lora.request import LoRARequest, check_lora_request
from pagoda.outputs import RequestOutput
from pagoda.pooling.outputs import PoolingRequestOutput
from pagoda.pooling.params import PoolingParams
from pagoda.sampling_params import SamplingParams

if TYPE_CHECKING:
    from pagoda.beam_search import BeamSearchStream
    from pagoda.sampling_params import BeamSearchParams

logger = logging.getLogger("pagoda")

DEFAULT_STUCK_TIMEOUT_S = envs.engine_stuck_timeout_s()
"""/health fails when requests are pending and the core has been silent this long."""
WATCHDOG_PERIOD_S = 0.5
_LAST_WORDS_POLLS = 4
"""The watchdog found a core's process gone: how many tenths of its period it waits for the core's last message
(``CoreFailed``, written to the socket before the core exits: it is in the front end's queue in microseconds, the
output loop only has to run) before it reports the exit code instead (0.2 s)."""


class EngineDeadError(RuntimeError):
    """The engine core process exited or failed; nothing can be served."""


class RequestAbortedError(RuntimeError):
    """The request was aborted by someone other than its consumer."""


class EngineNotReadyError(RuntimeError):
    """The model is still loading."""


class _Done:
    """What a call that has already done its work returns, so that it may also be awaited (vLLM's ``abort`` and
    ``shutdown`` are awaited or called plainly): awaiting it returns None at once."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


_DONE = _Done()


class StatLogger(Protocol):
    """What the front end reports (the Prometheus logger in the server implements it); ``engine``: the
    data-parallel replica the figure comes from (0 without data parallelism)."""

    def on_step(self, stats: SchedulerStats, engine: int = 0) -> None: ...
    def on_tokens(self, prompt_tokens: int, generation_tokens: int, engine: int = 0) -> None: ...
    def on_queue_time(self, seconds: float, engine: int = 0) -> None: ...
    def on_first_token(self, seconds: float, engine: int = 0) -> None: ...
    def on_inter_token(self, seconds: float, engine: int = 0) -> None: ...
    def on_finished(self, stats: FinishedRequestStats, engine: int = 0) -> None: ...
    def on_request_finished(self, n: int, max_num_generation_tokens: int, engine: int = 0) -> None: ...


class RequestStream:
    """Async iterator over one request's outputs: with CUMULATIVE outputs the latest state wins (a slow consumer
    skips the states in between); DELTA outputs not yet taken are merged into one (:func:`merge_delta`), so a
    consumer's deltas always add up to the whole output.

    After each ``__anext__``, ``last_deltas[i]`` holds the text of completion ``i`` that
    became safe to stream since the previous item (a tail that may begin a stop string is
    held back until it is resolved).
    """

    parent: ParentState  # set by _bind (a deferred request's once it is added)

    def __init__(self, engine: AsyncLLM, request_id: str, parent: ParentState | None,
                 prompt_token_ids: list[int]) -> None:
        """``parent`` None: a request whose adding waits for the engine's start (:meth:`AsyncLLM.add_request` before
        the engine is ready); ``_pending`` adds it on the first ``await`` / ``__anext__`` (its errors raise there)."""
        self.engine = engine
        self.request_id = request_id
        self._latest: RequestOutput | None = None
        self._error: BaseException | None = None
        # The consumers waiting for an output (one, as a rule): a future each, woken by ``_wake``. Plain futures, not
        # an ``asyncio.Event``: its set / clear / wait were a measurable share of the API server's CPU per streamed
        # token, and this wakes the consumers in the same order (the loop's ``call_soon`` order of delivery).
        self._waiters: list[asyncio.Future] = []
        self.finished = False  # the engine is done with this request (finished, failed or aborted)
        self._delivered_final = False
        self._pending: Callable[[RequestStream], None] | None = None  # adds a deferred request
        self._adding: asyncio.Future | None = None  # the deferred add under way (awaited by every consumer)
        self._bind(parent, prompt_token_ids)

    def _bind(self, parent: ParentState | None, prompt_token_ids: list[int]) -> None:
        """Attach the request's state (once the front end has admitted it)."""
        if parent is not None:
            self.parent = parent
        self.prompt_token_ids = prompt_token_ids
        self.n = parent.params.n if parent is not None else 1
        self._deltas = [""] * self.n
        self.last_deltas = [""] * self.n

    # ------------------------------------------------------------- producer side
    def _put(self, out: RequestOutput, deltas: list[str]) -> None:
        if self._latest is not None and self.parent.delta:
            out = merge_delta(self._latest, out)
        self._latest = out
        for i, d in enumerate(deltas):
            if d:
                self._deltas[i] += d
        if out.finished:
            self.finished = True
        if self._waiters:
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.finished and self._error is None and self._latest is not None and self._latest.finished:
            return  # the final output is already queued; let the consumer have it
        self.finished = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # ------------------------------------------------------------- consumer side
    def __await__(self) -> Generator[Any, None, RequestStream]:
        """``await engine.add_request(...)`` (vLLM's ``add_request`` is a coroutine returning the request's output
        collector): the stream itself, once its request is queued."""
        if self._pending is not None or self._adding is not None:
            yield from self._ensure_added().__await__()
        return self

    async def _ensure_added(self) -> None:
        """Run a deferred add once (start the engine, then admit and queue the request); its error raises to
        every caller."""
        if self._adding is None:
            add, self._pending = self._pending, None
            assert add is not None

            async def start_then_add() -> None:
                await self.engine._ensure_started()
                if self.finished:  # closed meanwhile: never queued
                    self._delivered_final = True
                    return
                add(self)

            self._adding = asyncio.ensure_future(start_then_add())
        try:
            await asyncio.shield(self._adding)
        except BaseException as e:
            if not self._adding.done() or self._adding.cancelled():
                raise  # this caller was cancelled: the add goes on for the others
            self.finished = self._delivered_final = True
            raise e from None

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._pending is not None or self._adding is not None:
            await self._ensure_added()
        if self._delivered_final:
            raise StopAsyncIteration
        while self._latest is None and self._error is None:
            w = asyncio.get_running_loop().create_future()
            self._waiters.append(w)
            try:
                await w
            except BaseException:  # cancelled: this consumer waits no more
                if w in self._waiters:
                    self._waiters.remove(w)
                raise
        return self._take()

    def _take(self) -> RequestOutput:
        """Hand over the waiting output (or raise the waiting error); one of them is waiting."""
        if self._latest is not None:
            out = self._latest
            self._latest = None
            self.last_deltas, self._deltas = self._deltas, [""] * self.n
            if out.finished:
                self._delivered_final = True
            return out
        self._delivered_final = True
        assert self._error is not None
        raise self._error

    async def get(self) -> RequestOutput:
        """vLLM's ``RequestOutputCollector.get``: the next output (waits for one; raises the request's error).
        After the final output it raises ``StopAsyncIteration``."""
        return await self.__anext__()

    def get_nowait(self) -> RequestOutput | None:
        """vLLM's ``RequestOutputCollector.get_nowait``: the output waiting now, else None (raises the request's
        error)."""
        if self._pending is not None or self._adding is not None and not self._adding.done():
            return None
        if self._adding is not None and not self._adding.cancelled() and self._adding.exception() is not None:
            raise self._adding.exception()  # type: ignore[misc]  # the deferred add's error
        if self._delivered_final or self._latest is None and self._error is None:
            return None
        return self._take()

    def close(self) -> None:
        """Stop following the request; aborts it in the core unless it already finished. A deferred request not yet
        added is dropped (never queued)."""
        if self._pending is not None:
            self._pending = None
            self.finished = self._delivered_final = True
            return
        if not self.finished:
            self.finished = True
            self.engine.abort(self.request_id)


FIRST_TOKENS_FIRST = True
"""Apply and deliver a step's first tokens before its other outputs (:func:`first_tokens_first`); False only for
A/B measurements (``benchmarks/gpu/with_module_values.py``)."""


def first_tokens_first(outputs: list[EngineCoreOutput], seen: Container[str]) -> list[EngineCoreOutput]:
    """A step's outputs in the order the front end applies and delivers them: the first tokens of requests
    (``request_id`` not in ``seen``, the requests that have had a token) before the rest, each group in the core's
    order. A stream's consumer wakes in the order of delivery, so at 64-256 streams a new request's first chunk is
    written before the step's other chunks instead of after a random share of them (issue 21's time to first
    token); the others' chunks are delayed by only the first tokens' share of the step's work."""
    firsts: list[EngineCoreOutput] = []
    rest: list[EngineCoreOutput] = []
    for o in outputs:
        (firsts if o.new_token_ids and o.request_id not in seen else rest).append(o)
    return firsts + rest if firsts and rest else outputs


async def final_output(stream: Any) -> RequestOutput:
    """Wait for a request's final output (closing the stream on any exit)."""
    last: RequestOutput | None = None
    try:
        async for out in stream:
            last = out
    finally:
        stream.close()
    assert last is not None
    return last


@dataclass
class _PendingCall:
    """A call every replica answers: its future, the answers still missing, and whether all so far succeeded."""

    future: asyncio.Future
    missing: int
    success: bool = True
    ids: set[int] = field(default_factory=set)  # list_loras: the union of the replicas' answers
    error: LoraAnswer | None = None  # add_lora: the first replica's refusal


class AsyncLLM:
    def __init__(
        self,
        engine_args: EngineArgs,
        stat_loggers: list[StatLogger] | None = None,
        stuck_timeout_s: float = DEFAULT_STUCK_TIMEOUT_S,
        log_level: int | None = None,
        prelaunched: PrelaunchedCore | None = None,
        api_server_count: int = 1,
        attach: Attach | None = None,
        on_launched: Callable[[str, tuple[int, ...]], None] | None = None,
    ) -> None:
        """``prelaunched``: an engine core ``pagoda serve`` started before its own imports (adopted by
        :meth:`start` when it fits, else told to exit).

        Several API server processes (``--api-server-count N``): the one that starts the core says ``N`` and is
        client 0; ``on_launched(ipc_dir, core_pids)`` runs once the cores are spawned (to start the others). Each
        other process passes ``attach`` (:class:`pagoda.engine.core_proc.Attach`) instead and talks to those
        cores as client ``attach.client`` (with data parallelism, balancing its own requests over the replicas
        from their reported load and its own dispatches). Only client 0 feeds the engine-level stats
        (``on_step``) to its stat loggers, so they are counted once; every client counts its own requests'
        figures."""
        self.engine_args = engine_args
        self.prelaunched = prelaunched
        self.api_server_count = api_server_count
        self.attach = attach
        self.client = attach.client if attach is not None else 0
        self.on_launched = on_launched
        self.stat_loggers = list(stat_loggers or [])
        self.stuck_timeout_s = stuck_timeout_s
        self.log_level = log_level if log_level is not None else logging.getLogger("pagoda").getEffectiveLevel()
        self.cfg: EngineConfig | None = None
        self.tokenizer: Any = None
        self.input_processor: InputProcessor | None = None
        self.output_processor: OutputProcessor | None = None
        self.state = "created"  # created | loading | ready | dead | shutdown
        self.dead_reason: str | None = None
        self.stuck = False
        self.ready_info: Ready | None = None  # the replicas' Ready combined (the smallest KV cache)
        self.cores: CoreEngines | None = None
        self.balancer = LoadBalancer(max(1, engine_args.data_parallel_size))
        self._owner: dict[str, int] = {}  # engine request id -> the replica that runs it
        self._streams: dict[str, RequestStream] = {}
        self._last_token_time: dict[str, float] = {}
        self._times: dict[str, ChildTimes] = {}  # per engine request, for the request-level metrics
        self._trace = RequestTrace.from_env()  # PAGODA_REQUEST_TRACE: per-request timings (a diagnostic)
        self._tasks: list[asyncio.Task] = []
        self._enc = encoder()
        self._dec = output_decoder()
        self._calls: dict[int, _PendingCall] = {}  # calls every core answers (reset_prefix_cache), by call id
        self._next_call_id = 0
        self._starting: asyncio.Future | None = None  # start() run for generate() / encode() (_ensure_started)
        self._stopping: Awaitable[None] | None = None  # what shutdown() returned

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> AsyncLLM:
        """vLLM's constructor: checks the arguments, resolves the configuration and loads the tokenizer now (their
        errors raise here). The engine core starts at once when called in a running event loop, else on the first
        ``generate()`` / ``encode()``; ``await engine.start()`` waits for it explicitly."""
        engine_args.validate()
        eng = cls(engine_args)
        eng.cfg = engine_args.create_config()
        eng.tokenizer = load_tokenizer(eng.cfg)
        with contextlib.suppress(RuntimeError):  # no running loop: started by the first generate() / encode()
            asyncio.get_running_loop()
            eng._starting = asyncio.ensure_future(eng._start())
            # its failure is raised to whoever awaits the start (generate(), start()), not logged as unretrieved
            eng._starting.add_done_callback(lambda t: t.cancelled() or t.exception())
        return eng

    async def _ensure_started(self) -> None:
        """Start an engine nobody started (``from_engine_args``, or ``generate()`` on a new ``AsyncLLM``), once:
        concurrent callers wait for the same start and all see its failure. An engine being started by a direct
        ``start()`` call (the server's) is left alone (its requests get ``EngineNotReadyError``)."""
        if self._starting is None and self.state == "created":
            self._starting = asyncio.ensure_future(self._start())
        if self._starting is not None:
            await asyncio.shield(self._starting)

    # ---------------------------------------------------------------- lifecycle
    @property
    def is_ready(self) -> bool:
        return self.state == "ready"

    @property
    def proc(self) -> Any:
        """Replica 0's engine-core process (the only one without data parallelism)."""
        return self.cores.engines[0].proc if self.cores is not None and self.cores.engines else None

    @property
    def last_stats(self) -> SchedulerStats:
        """The latest scheduler stats, summed over the replicas."""
        if self.cores is None or not self.cores.engines:
            return SchedulerStats()
        return sum_stats([e.stats for e in self.cores.engines])

    async def start(self) -> None:
        """Resolve the model, spawn the core(s), load the tokenizer, wait until every core is ready. When a start
        is under way already (``from_engine_args``, ``generate()``), waits for that one; no-op once ready."""
        if self._starting is not None:
            await asyncio.shield(self._starting)
        elif self.state != "ready":
            await self._start()

    async def _resolve_config(self, early: PrelaunchedCore | None) -> EngineConfig:
        """The engine's config (in a thread: it may fetch or convert the model). A failure, or a ``shutdown()``
        meanwhile, ends the start here and the early core is discarded."""
        try:
            cfg = self.cfg if self.cfg is not None else await asyncio.to_thread(self.engine_args.create_config)
        except BaseException as exc:
            if early is not None:
                early.discard()
            self.state, self.dead_reason = "dead", f"the engine failed to start: {exc}"
            raise
        if self.state == "shutdown":  # launch nothing
            if early is not None:
                early.discard()
            raise EngineDeadError(self.health()[1])
        return cfg

    async def _start(self) -> None:
        if self.state == "shutdown":  # shut down before a deferred start ran
            raise EngineDeadError(self.health()[1])
        self.state = "loading"
        t0 = time.perf_counter()
        early, self.prelaunched = self.prelaunched, None
        cfg = self.cfg = await self._resolve_config(early)
        # The cores resolve the same model folder (already fetched/converted by create_config above; an early core
        # waits for its arguments, sent only now).
        self.cores = CoreEngines(self.engine_args, cfg, self.log_level, self.api_server_count, self.attach)
        tok_task: asyncio.Task | None = None
        try:
            self.cores.launch(early)
            t_launch = time.perf_counter()
            if self.on_launched is not None and self.attach is None:
                assert self.cores.ipc_dir is not None
                self.on_launched(self.cores.ipc_dir, tuple(e.proc.pid for e in self.cores.engines))
            if self.tokenizer is None:  # (from_engine_args loaded it already)
                tok_task = asyncio.create_task(asyncio.to_thread(_timed, load_tokenizer, cfg))
            readies = await self.cores.wait_ready()
            t_cores = time.perf_counter()
            tok_s = 0.0
            if tok_task is not None:
                self.tokenizer, tok_s = await tok_task
        except BaseException as exc:
            if tok_task is not None:
                tok_task.cancel()
            if early is not None:
                early.discard()  # unless launch() adopted it (then stop() below stops it)
            await self.cores.stop()
            if self.state != "shutdown":
                self.state, self.dead_reason = "dead", f"the engine failed to start: {exc}"
            elif isinstance(exc, asyncio.CancelledError) and not _being_cancelled():
                # shutdown() closed the sockets wait_ready polled: the start failed because the engine shut down
                raise EngineDeadError(self.health()[1]) from None
            raise
        if self.state == "shutdown":  # shutdown() was called while it started
            await self.cores.stop()
            raise EngineDeadError(self.health()[1])
        ready = _combine(readies)
        self.ready_info = ready
        self.input_processor = InputProcessor(cfg, self.tokenizer, eos_token_ids(cfg, self.tokenizer), ready.limits)
        self.output_processor = OutputProcessor(self.tokenizer, cfg.stream_interval)
        for e in self.cores.engines:
            e.last_msg = time.monotonic()
        self._tasks = [*(asyncio.create_task(self._output_loop(i)) for i in range(self.cores.size)),
                       asyncio.create_task(self._watchdog())]
        self.state = "ready"
        dp = f" x {self.cores.size} data-parallel replicas" if self.cores.size > 1 else ""
        from pagoda.engine.core_proc import process_age_s

        age = process_age_s()
        up = "" if age is None else f" (this process started {age:.1f} s ago)"
        logger.info("engine ready in %.1f s%s: %d KV blocks of %d tokens%s, max_model_len %d (config %.1f s, then the "
                    "core ready after %.1f s; the tokenizer, loaded meanwhile, took %.1f s)",
                    time.perf_counter() - t0, up, ready.num_blocks - 1, ready.block_size, dp,
                    ready.limits.max_model_len, t_launch - t0, t_cores - t_launch, tok_s)

    def shutdown(self) -> Awaitable[None]:
        """Fail the requests in flight (``EngineDeadError``), stop the output tasks and the engine core process(es);
        the engine refuses work afterwards. Idempotent. Called plainly (vLLM's ``engine.shutdown()``) it takes
        effect at once: the cores are told to exit now and, in a running event loop, a task finishes the rest
        (without one, it is finished before returning); awaiting the result waits until the cores have exited."""
        if self._stopping is not None:
            return self._stopping
        self.state = "shutdown"
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        err = EngineDeadError("the engine is shutting down")
        for s in list(self._streams.values()):
            s._fail(err)
        self._streams.clear()
        self._fail_calls(err)
        self._tell_cores_to_exit()
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop: the output tasks ended with theirs
            asyncio.run(self._stop_cores([]))
            self._stopping = _DONE
        else:
            self._stopping = asyncio.ensure_future(self._stop_cores(tasks))
        return self._stopping

    def _tell_cores_to_exit(self) -> None:
        """Send the cores this front end started ``Shutdown`` now, so they exit even if nothing waits for them."""
        import zmq

        if self.cores is None or self.attach is not None:
            return
        frame = self._enc.encode(Shutdown())
        for e in self.cores.engines:
            with contextlib.suppress(Exception):
                e.in_sock.send(frame, flags=zmq.NOBLOCK)

    async def _stop_cores(self, tasks: list[asyncio.Task]) -> None:
        """The rest of ``shutdown()``: wait for the cancelled output tasks, then for the cores to exit."""
        try:
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            if self.cores is not None:
                await self.cores.stop()
        finally:  # cut short (shutdown() not awaited and its loop ended): the sockets must not outlive the engine
            if self.cores is not None:
                self.cores.release()

    # ------------------------------------------------------- vLLM's engine-client state
    @property
    def is_running(self) -> bool:
        """Neither dead nor shut down (vLLM's ``is_running``; True before the engine has started)."""
        return self.state in ("created", "loading", "ready")

    @property
    def errored(self) -> bool:
        """The engine died or was shut down: it serves nothing more (vLLM's ``errored``)."""
        return not self.is_running

    @property
    def is_stopped(self) -> bool:
        return self.errored

    @property
    def dead_error(self) -> BaseException:
        """The error a request gets once ``errored`` (vLLM's ``dead_error``)."""
        return EngineDeadError(self.health()[1] if self.errored else "The engine is not dead.")

    async def check_health(self) -> None:
        """Raise ``dead_error`` when ``errored`` (vLLM's ``check_health``; :meth:`health` also tells stuck)."""
        if self.errored:
            raise self.dead_error

    # -------------------------------------------------------------------- health
    def health(self) -> tuple[bool, str]:
        """(can serve, reason when not)."""
        if self.state in ("created", "loading"):
            return False, "The model is loading."
        if self.state == "dead":
            return False, f"The engine core is dead: {self.dead_reason}"
        if self.state == "shutdown":
            return False, "The engine was shut down (the server is stopping, or AsyncLLM.shutdown() was called)."
        if self.stuck:
            return False, (f"The engine core has made no progress for more than {self.stuck_timeout_s:g} s "
                           f"with requests pending.")
        return True, ""

    def check_servable(self) -> None:
        if self.state in ("created", "loading"):
            raise EngineNotReadyError("The model is still loading; retry shortly.")
        if self.state != "ready":
            raise EngineDeadError(self.health()[1])

    # ------------------------------------------------------------------ requests
    def get_tokenizer(self) -> Any:
        """The tokenizer (raises ``EngineNotReadyError`` before ``start()`` has loaded it)."""
        if self.tokenizer is None:
            raise EngineNotReadyError("The tokenizer is not loaded yet: await engine.start() first (or build the "
                                      "engine with AsyncLLM.from_engine_args).")
        return self.tokenizer

    @property
    def max_model_len(self) -> int:
        assert self.cfg is not None
        return self.cfg.max_model_len

    @property
    def vocab_size(self) -> int:
        assert self.ready_info is not None
        return self.ready_info.limits.vocab_size

    def default_sampling_params(self) -> SamplingParams:
        assert self.input_processor is not None
        return self.input_processor.default_sampling_params()

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams | PoolingParams | None = None,
                    arrival_time: float | None = None, lora_request: LoRARequest | None = None,
                    tokenization_kwargs: dict[str, Any] | None = None, trace_headers: Any = None,
                    priority: int = 0, data_parallel_rank: int | None = None) -> RequestStream:
        """vLLM's ``add_request`` (its parameters in its order): tokenize, admit and queue a request; returns its
        :class:`RequestStream` (vLLM's ``RequestOutputCollector``: ``get()``, ``get_nowait()``, or ``async for``).

        Called plainly on a ready engine it queues at once and raises ``ValidationError`` (nothing queued) if the
        request is invalid; the result may also be awaited (vLLM's ``await engine.add_request(...)``). Before the
        engine is ready, when this front end starts it itself (``from_engine_args``, ``generate()``), the request
        is queued on the first ``await`` / ``get()`` / iteration, after the start; its errors raise there. A bad
        ``lora_request`` adapter (which the core reads) ends the stream with that error. ``PoolingParams``: a
        pooling request (:meth:`add_pooling_request`). ``tokenization_kwargs``: see
        :func:`pagoda.engine.tokenization_kwargs.apply_tokenization_kwargs`; ``data_parallel_rank``: the replica to
        run it (default: the least loaded); ``arrival_time`` and ``trace_headers`` only None (pagoda times a request
        from its admission and has no tracing)."""
        for name, value in (("arrival_time", arrival_time), ("trace_headers", trace_headers)):
            if value is not None:
                raise ValidationError(f"{name}={value!r}: pagoda's AsyncLLM.add_request takes only None (it times a "
                                      f"request from its admission and has no request tracing).", name)
        if isinstance(params, PoolingParams):
            if lora_request is not None:
                raise ValidationError("lora_request: pooling requests take no LoRA adapter; pass None.",
                                      "lora_request")
            return self.add_pooling_request(request_id, prompt, params, priority,
                                            tokenization_kwargs=tokenization_kwargs,
                                            data_parallel_rank=data_parallel_rank)

        def add(stream: RequestStream | None) -> RequestStream:
            return self._add_generate(stream, request_id, prompt, params, priority, lora_request,
                                      tokenization_kwargs, data_parallel_rank)

        return self._deferred(request_id, add) or add(None)

    def _deferred(self, request_id: str, add: Callable[[RequestStream], Any]) -> RequestStream | None:
        """A stream whose ``add`` waits for the engine's start, when this front end starts the engine itself and
        it is not ready yet; None otherwise (add now: a ready engine, or one the server is starting, whose
        requests get ``EngineNotReadyError``)."""
        ours = (self._starting is not None and not self._starting.done()) or \
            (self.state == "created" and self._starting is None)
        if not ours:
            return None
        stream = RequestStream(self, request_id, None, [])
        stream._pending = add
        return stream

    def _add_generate(self, stream: RequestStream | None, request_id: str, prompt: PromptType,
                      params: SamplingParams | None, priority: int, lora_request: LoRARequest | None,
                      tokenization_kwargs: dict[str, Any] | None, data_parallel_rank: int | None) -> RequestStream:
        """Admit and queue a generation request now (into ``stream`` when a deferred one waits for it)."""
        prompt, rank = self._admit(request_id, prompt, tokenization_kwargs, data_parallel_rank)
        assert self.input_processor is not None and self.output_processor is not None
        text, ids, params, core_reqs = self.input_processor.process(request_id, prompt, params, priority, lora_request)
        try:  # encode before registering anything, so a failure leaves no state behind
            frames = [self._enc.encode(AddRequest(r, self.client)) for r in core_reqs]
        except (OverflowError, TypeError, ValueError) as e:
            raise ValidationError(f"The request holds a value the engine cannot carry: {e}") from None
        self.output_processor.add_request(request_id, text, ids, params, lora_request=lora_request)
        return self._register(stream, request_id, ids, frames, [r.request_id for r in core_reqs], rank)

    def _register(self, stream: RequestStream | None, request_id: str, ids: list[int], frames: list[bytes],
                  child_ids: list[str], rank: int | None) -> RequestStream:
        """Make (or bind) the request's stream and send its frames to the replica chosen for it."""
        assert self.output_processor is not None
        parent = self.output_processor.parents[request_id]
        if stream is None:
            stream = RequestStream(self, request_id, parent, ids)
        else:
            stream._bind(parent, ids)
        self._streams[request_id] = stream
        engine = self._dispatch(child_ids, rank)
        try:
            for f in frames:
                self._send_raw(f, engine)
        except BaseException:
            self.abort(request_id)
            raise
        return stream

    def _admit(self, request_id: str, prompt: PromptType, tokenization_kwargs: dict[str, Any] | None,
               data_parallel_rank: int | None) -> tuple[PromptType, int | None]:
        """The checks every request passes before its own processing (generation and pooling alike): the engine
        can serve, the id is free, ``tokenization_kwargs`` applied, ``data_parallel_rank`` valid. Returns the
        prompt to process and the replica asked for."""
        self.check_servable()
        assert self.output_processor is not None
        admission.check_request_id_free(request_id, request_id in self._streams or
                                        request_id in self.output_processor.parents)
        prompt = apply_tokenization_kwargs(prompt, tokenization_kwargs, self.tokenizer, self.max_model_len)
        return prompt, self._check_rank(data_parallel_rank)

    def _check_rank(self, rank: int | None) -> int | None:
        """vLLM's ``data_parallel_rank``: None, or a replica of this engine."""
        size = self.balancer.num_engines
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < size):
            raise ValidationError(f"data_parallel_rank={rank!r}: must be None or a replica index in [0, {size}) "
                                  f"(--data-parallel-size {size}).", "data_parallel_rank")
        return rank

    def add_pooling_request(self, request_id: str, prompt: PromptType, params: PoolingParams,
                            priority: int = 0, *, tokenization_kwargs: dict[str, Any] | None = None,
                            data_parallel_rank: int | None = None) -> RequestStream:
        """Tokenize, admit and queue a pooling request (``--runner pooling``); its stream yields one final
        ``PoolingRequestOutput``. Raises ``ValidationError`` (nothing queued) if invalid; awaitable and deferred
        before the engine's start as :meth:`add_request`."""

        def add(stream: RequestStream | None) -> RequestStream:
            p, rank = self._admit(request_id, prompt, tokenization_kwargs, data_parallel_rank)
            assert self.input_processor is not None and self.output_processor is not None
            text, ids, core_req = self.input_processor.process_pooling(request_id, p, params, priority)
            frame = self._enc.encode(AddRequest(core_req, self.client))
            self.output_processor.add_request(request_id, text, ids, core_req.sampling_params, pooling=True)
            return self._register(stream, request_id, ids, [frame], [core_req.request_id], rank)

        return self._deferred(request_id, add) or add(None)

    def _dispatch(self, child_ids: list[str], rank: int | None = None) -> int:
        """The replica that will run these engine requests (the samples of one request): ``rank`` when given, else
        the least loaded; records it."""
        if rank is None:
            engine = self.balancer.choose()
        else:
            engine = rank
            self.balancer.counts[rank][0] += 1  # counted as waiting there, as choose() does
        for cid in child_ids:
            self._owner[cid] = engine
        return engine

    def _send_by_owner(self, make: Any, child_ids: list[str]) -> None:
        """Send ``make(ids)`` to each replica that owns some of ``child_ids`` (its ids only)."""
        groups: dict[int, list[str]] = defaultdict(list)
        for cid in child_ids:
            groups[self._owner.get(cid, 0)].append(cid)
        for engine, ids in groups.items():
            self._send(make(ids), engine)

    def _forget(self, child_ids: Any) -> None:
        for cid in child_ids:
            self._owner.pop(cid, None)

    async def encode(self, prompt: PromptType, pooling_params: PoolingParams, request_id: str, *, priority: int = 0,
                     tokenization_kwargs: dict[str, Any] | None = None) -> AsyncIterator[PoolingRequestOutput]:
        """vLLM's ``AsyncLLM.encode``: an async generator of the pooling request's output (one, final); leaving it
        early (break, cancellation) aborts the request. Starts the engine if nobody did."""
        await self._ensure_started()
        stream = await self.add_pooling_request(request_id, prompt, pooling_params, priority,
                                                tokenization_kwargs=tokenization_kwargs)
        try:
            async for out in stream:
                yield out  # type: ignore[misc]  # a pooling request's stream yields PoolingRequestOutput
        finally:
            stream.close()

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams | None, request_id: str, *,
                       priority: int = 0, lora_request: LoRARequest | None = None,
                       tokenization_kwargs: dict[str, Any] | None = None) -> AsyncIterator[RequestOutput]:
        """vLLM's ``AsyncLLM.generate``: the request's outputs as ``sampling_params.output_kind`` says (CUMULATIVE,
        DELTA or FINAL_ONLY); leaving the loop early (break, cancellation) aborts it and frees its KV blocks.
        Starts the engine if nobody did. ``lora_request``: the LoRA adapter to run with (needs an engine started
        with ``enable_lora``; None: the base model)."""
        await self._ensure_started()
        stream = await self.add_request(request_id, prompt, sampling_params, lora_request=lora_request,
                                        tokenization_kwargs=tokenization_kwargs, priority=priority)
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

    async def reset_prefix_cache(self, timeout_s: float = 30.0) -> bool:
        """Drop the core's cached prefix blocks (vLLM's ``reset_prefix_cache``).

        True when the cache is empty afterwards; False when running requests still hold
        cached blocks (those stay until the requests finish).
        """
        return (await self._call_every_core(lambda cid: ResetPrefixCache(cid, self.client), timeout_s)).success

    def _on_call_answer(self, msg: PrefixCacheReset | LoraAnswer) -> None:
        """One replica answered a call (``reset_prefix_cache``, the LoRA calls); the call returns when all have:
        True if all succeeded (the ids' union for ``list_loras``), or raises the first refusal of an adapter."""
        call = self._calls.get(msg.call_id)
        if call is None or call.future.done():
            return
        call.missing -= 1
        call.success = call.success and msg.success
        if isinstance(msg, LoraAnswer):
            call.ids.update(msg.ids)
            if msg.error is not None and call.error is None:
                call.error = msg
        if call.missing == 0:
            if call.error is not None:
                from pagoda.lora.peft import LoRANotFoundError

                err = call.error
                call.future.set_exception((LoRANotFoundError if err.not_found else ValueError)(err.error))
            else:
                call.future.set_result(call.success)

    async def _call_every_core(self, make: Callable[[int], Any], timeout_s: float) -> _PendingCall:
        """Send ``make(call_id)`` to every replica and wait for all answers (:meth:`_on_call_answer`)."""
        self.check_servable()
        assert self.cores is not None
        call_id = self._next_call_id
        self._next_call_id += 1
        call = self._calls[call_id] = _PendingCall(asyncio.get_running_loop().create_future(), self.cores.size)
        try:
            for engine in range(self.cores.size):
                self._send(make(call_id), engine)
            await asyncio.wait_for(call.future, timeout_s)
            return call
        finally:
            self._calls.pop(call_id, None)

    async def add_lora(self, lora_request: LoRARequest, timeout_s: float = 120.0) -> bool:
        """vLLM's ``add_lora``: every engine core reads and checks the adapter now and keeps it loaded, so the
        requests naming it find it ready. Raises ``ValueError`` naming the adapter and the problem
        (:class:`~pagoda.lora.peft.LoRANotFoundError`: no adapter at its path), also without ``enable_lora``."""
        await self._ensure_started()
        check_lora_request(lora_request, self.cfg is not None and self.cfg.lora is not None)
        await self._call_every_core(lambda cid: AddLora(cid, lora_request, self.client), timeout_s)
        return True

    async def remove_lora(self, lora_id: int, timeout_s: float = 30.0) -> bool:
        """vLLM's ``remove_lora``: drop the adapter from the cores' host caches; True if every core held it."""
        await self._ensure_started()
        return (await self._call_every_core(lambda cid: RemoveLora(cid, lora_id, self.client), timeout_s)).success

    async def list_loras(self, timeout_s: float = 30.0) -> set[int]:
        """vLLM's ``list_loras``: ids of the adapters loaded in the cores' host memory."""
        await self._ensure_started()
        return (await self._call_every_core(lambda cid: ListLoras(cid, self.client), timeout_s)).ids

    def _fail_calls(self, exc: BaseException) -> None:
        for call in self._calls.values():
            if not call.future.done():
                call.future.set_exception(exc)
        self._calls.clear()

    def beam_search(self, request_id: str, prompt: PromptType, params: BeamSearchParams,
                    skip_special_tokens: bool = True, logprobs: int | None = None,
                    prompt_logprobs: int | None = None) -> BeamSearchStream:
        """Admit a beam search (raises ``ValidationError``, nothing queued) and return its stream.

        Iterating the stream runs the search (one engine request per live beam and step, see
        :mod:`pagoda.beam_search`) and yields one final ``RequestOutput`` with
        ``beam_width`` choices, best first; ``close()`` aborts the step in flight. ``logprobs``: each
        token's logprobs as a sampled request with that many has them; ``prompt_logprobs``: the output
        carries the prompt's logprobs too (the completions endpoint's ``echo`` with ``logprobs``).
        """
        from pagoda.beam_search import BeamSearchStream

        self.check_servable()
        assert self.input_processor is not None
        inst = self.input_processor.beam_search(prompt, params, logprobs)
        return BeamSearchStream(self, request_id, inst, skip_special_tokens, logprobs, prompt_logprobs)

    def abort(self, request_id: str | Iterable[str]) -> Awaitable[None]:
        """Abort requests (idempotent; unknown and finished ids are ignored); the core frees their KV blocks. Done
        when it returns; the result may be awaited (vLLM's ``await engine.abort(request_id)``)."""
        for rid in [request_id] if isinstance(request_id, str) else list(request_id):
            self._abort_one(rid)
        return _DONE

    def _abort_one(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        if self.output_processor is None:
            return
        child_ids = self.output_processor.abort(request_id)
        for cid in child_ids:
            self._last_token_time.pop(cid, None)
        if child_ids and self.state == "ready":
            with contextlib.suppress(EngineDeadError):
                self._send_by_owner(AbortRequests, child_ids)
        if stream is not None:  # a live stream: none of its samples was reported yet (a finished parent's stream
            # is gone), so each is, as vLLM reports a sample when it ends: its own reason if it ended, else abort
            samples = [c for c in child_ids if c in stream.parent.children]
            for cid in samples:
                self._record_finished(stream.parent, cid, None if stream.parent.children[cid].finish_reason
                                      else "abort")
            if samples:
                self._record_request_finished(stream.parent)
        for cid in child_ids:
            self._times.pop(cid, None)
        self._forget(child_ids)
        if stream is not None and not stream.finished:
            # aborted by someone other than its consumer: the stream ends with a final "abort" output, as vLLM's
            final = self.output_processor.aborted_output(stream.parent)
            if final is None:
                stream._fail(RequestAbortedError(f"request {request_id} was aborted"))
            else:
                stream._put(final, [c.detok.take_stream_delta(True) if c.detok else ""
                                    for c in stream.parent.children.values()])

    # ------------------------------------------------------------------ plumbing
    def _send(self, msg: Any, engine: int) -> None:
        self._send_raw(self._enc.encode(msg), engine)

    def _send_raw(self, frame: bytes, engine: int) -> None:
        import zmq

        if self.cores is None or self.state not in ("loading", "ready"):
            raise EngineDeadError("the engine core is not running")
        try:
            self.cores.engines[engine].in_sock.send(frame, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._mark_dead(f"the {self.cores.name(engine)} stopped accepting messages")
            raise EngineDeadError(self.dead_reason) from None

    async def _output_loop(self, engine: int) -> None:
        """Receive and apply replica ``engine``'s messages (one such task per replica)."""
        assert self.cores is not None
        core = self.cores.engines[engine]
        while True:
            try:
                raw = await core.out_sock.recv()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self.state == "ready":
                    self._mark_dead(f"lost the {self.cores.name(engine)}'s output socket: {e}")
                return
            core.last_msg = time.monotonic()
            if self.stuck and self._most_silent()[1] <= self.stuck_timeout_s:
                self.stuck = False
                logger.warning("engine core is making progress again")
            try:
                msg = self._dec.decode(raw)
            except msgspec.DecodeError as e:
                logger.error("dropping an undecodable message from the engine core: %s", e)
                continue
            try:
                if isinstance(msg, StepOutputs):
                    self._on_step(msg, engine)
                elif isinstance(msg, Heartbeat):
                    self._on_stats(msg.stats, engine)
                elif isinstance(msg, Rejected):
                    self._on_rejected(msg)
                elif isinstance(msg, (PrefixCacheReset, LoraAnswer)):
                    self._on_call_answer(msg)
                elif isinstance(msg, CoreFailed):
                    dp = self.cores.size > 1
                    self._mark_dead(f"{self.cores.name(engine)}: {msg.message}" if dp else msg.message)
                    return
            except Exception:  # never let one bad message stop the loop that serves everyone
                logger.exception("error while handling an engine core message")

    def _on_stats(self, stats: SchedulerStats | None, engine: int) -> None:
        if stats is None:
            return
        assert self.cores is not None
        self.cores.engines[engine].stats = stats
        self.balancer.on_stats(engine, stats)
        if self.client != 0:  # client 0 reports the engine's figures (each API process gets the same stats)
            return
        for sl in self.stat_loggers:
            sl.on_step(stats, engine=engine)

    def _on_step(self, msg: StepOutputs, engine: int) -> None:
        """One step's outputs from replica ``engine`` (every request in it is that replica's)."""
        op = self.output_processor
        assert op is not None
        self._on_scheduled(msg, engine)
        self._on_stats(msg.outputs.stats, engine)
        now = time.time()
        to_stop: list[str] = []
        loggers = self.stat_loggers
        last_times = self._last_token_time
        outs = msg.outputs.outputs
        for o in first_tokens_first(outs, last_times) if FIRST_TOKENS_FIRST else outs:
            pid = op.child_to_parent.get(o.request_id)
            if pid is None:
                continue  # aborted meanwhile
            if o.new_token_ids:
                last = last_times.get(o.request_id)
                if last is not None:
                    for sl in loggers:
                        sl.on_inter_token(now - last, engine=engine)
                last_times[o.request_id] = now
                self._on_child_tokens(o.request_id, op.parents[pid].metrics.arrival_time, now, engine)
            try:
                res, stop = op.process_one(o)
            except Exception as e:  # fail this request only
                logger.exception("output processing failed for request %s", pid)
                stream = self._streams.get(pid)
                if stream is not None:  # failed first: the abort below then ends nothing more (no "abort" output)
                    stream._fail(RuntimeError(f"internal error while processing the output: {e}"))
                self.abort(pid)
                continue
            if stop:
                to_stop.append(o.request_id)
            if res is not None:
                self._deliver(res)
        prompt_tokens, generation_tokens = op.take_token_counts()  # every API process: its own requests
        if prompt_tokens or generation_tokens:
            for sl in loggers:
                sl.on_tokens(prompt_tokens, generation_tokens, engine=engine)
        if to_stop:
            for cid in to_stop:
                self._last_token_time.pop(cid, None)
            with contextlib.suppress(EngineDeadError):
                self._send(FinishRequests(to_stop), engine)

    def _on_scheduled(self, msg: StepOutputs, engine: int) -> None:
        """The step's newly scheduled requests: their queue times."""
        op = self.output_processor
        assert op is not None
        for q in msg.scheduled:
            if q.request_id in op.child_to_parent:
                t = self._times.setdefault(q.request_id, ChildTimes())
                t.queued_s, t.scheduled_at = q.seconds, q.scheduled_at or None
            for sl in self.stat_loggers:
                sl.on_queue_time(q.seconds, engine=engine)

    def _deliver(self, res: RequestOutput) -> None:
        stream = self._streams.get(res.request_id)
        if stream is None:
            return
        deltas = [c.detok.take_stream_delta(c.finish_reason is not None) if c.detok else ""
                  for c in stream.parent.children.values()]  # in index order
        stream._put(res, deltas)
        if res.finished:
            self._streams.pop(res.request_id, None)
            for cid in stream.parent.children:
                self._record_finished(stream.parent, cid, None)
                self._last_token_time.pop(cid, None)
                self._times.pop(cid, None)
            self._record_request_finished(stream.parent)
            self._forget(stream.parent.children)

    def _on_rejected(self, msg: Rejected) -> None:
        op = self.output_processor
        assert op is not None
        pid = op.child_to_parent.get(msg.request_id)
        if pid is None:
            return
        stream = self._streams.pop(pid, None)
        child_ids = op.abort(pid)
        for cid in child_ids:
            self._times.pop(cid, None)
        others = [c for c in child_ids if c != msg.request_id]
        if others:
            with contextlib.suppress(EngineDeadError):
                self._send_by_owner(AbortRequests, others)
        self._forget(child_ids)
        if stream is not None:
            err: Exception = (RuntimeError(msg.message) if msg.internal
                              else ValidationError(msg.message, msg.parameter, code=msg.code))
            stream._fail(err)

    def _on_child_tokens(self, cid: str, arrival: float, now: float, engine: int) -> None:
        """Token times of engine request ``cid``; its first token reports the time to first token."""
        t = self._times.get(cid)
        if t is None:
            t = self._times[cid] = ChildTimes()
        if t.first_token_at is None:
            t.first_token_at = now
            for sl in self.stat_loggers:
                sl.on_first_token(max(0.0, now - arrival), engine=engine)
        t.last_token_at = now

    def _record_finished(self, parent: ParentState, cid: str, reason: str | None) -> None:
        """Report engine request ``cid`` of ``parent`` as finished (``reason`` None: its own)."""
        child = parent.children[cid]
        p = parent.params
        # a pooling request has no max_tokens (its SamplingParams is internal): vLLM does not observe one
        max_tokens = None if parent.pooling else \
            p.max_tokens if p.max_tokens is not None else self.max_model_len - len(parent.prompt_token_ids)
        stats = finished_stats(self._times.get(cid), time.time(), parent.metrics.arrival_time,
                               reason or child.finish_reason or "abort", len(parent.prompt_token_ids),
                               len(child.token_ids), max_tokens, parent.num_cached_tokens)
        engine = self._owner.get(cid, 0)
        for sl in self.stat_loggers:
            sl.on_finished(stats, engine=engine)
        if self._trace is not None:
            self._trace.write(parent.request_id, cid, parent.metrics.arrival_time, self._times.get(cid), stats)

    def _record_request_finished(self, parent: ParentState) -> None:
        """Report a user request (all its ``n`` samples) as finished."""
        longest = max((len(c.token_ids) for c in parent.children.values()), default=0)
        engine = next((self._owner[c] for c in parent.children if c in self._owner), 0)
        for sl in self.stat_loggers:
            sl.on_request_finished(parent.params.n, longest, engine=engine)

    def _mark_dead(self, reason: str) -> None:
        if self.state == "dead":
            return
        if self.state == "shutdown":
            return
        self.state = "dead"
        self.dead_reason = reason
        logger.error("engine core is dead: %s", reason)
        err = EngineDeadError(f"The engine core is dead: {reason}")
        for s in list(self._streams.values()):
            s._fail(err)
        self._streams.clear()
        self._owner.clear()
        self._fail_calls(err)

    def _most_silent(self) -> tuple[int, float]:
        """(replica, seconds since its last message) of the replica silent longest."""
        assert self.cores is not None
        now = time.monotonic()
        e = min(self.cores.engines, key=lambda e: e.last_msg)
        return e.index, now - e.last_msg

    async def _watchdog(self) -> None:
        """Any replica's process gone: the engine is dead. Requests pending and a replica silent (an idle one sends
        a heartbeat every second) for ``stuck_timeout_s``: stuck, until it speaks again."""
        assert self.cores is not None
        while self.state == "ready":
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            dead = self.cores.first_dead()
            if dead is not None:
                # a core that failed sent CoreFailed (the cause, by name) before it exited: let the output loop read
                # it first, if it is still on its way, rather than report only the exit code
                for _ in range(_LAST_WORDS_POLLS):
                    await asyncio.sleep(WATCHDOG_PERIOD_S / 10)
                    if self.state != "ready":
                        return
                self._mark_dead(f"the {self.cores.name(dead.index)} process exited (exit code {dead.proc.exitcode})")
                return
            engine, silent = self._most_silent()
            if self._streams and silent > self.stuck_timeout_s:
                if not self.stuck:
                    self.stuck = True
                    logger.error("%s silent for %.1f s with %d requests pending", self.cores.name(engine), silent,
                                 len(self._streams))
            elif self.stuck and not self._streams:
                self.stuck = False


def _being_cancelled() -> bool:
    """Whether the running task itself was asked to stop (a ``CancelledError`` it sees is then its own)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    """``(fn(*args), seconds it took)``."""
    t0 = time.perf_counter()
    return fn(*args), time.perf_counter() - t0


def _combine(readies: list[Ready]) -> Ready:
    """The replicas' ``Ready`` as one engine's: admission uses the smallest KV cache (a request must fit any
    replica)."""
    smallest = min(readies, key=lambda r: r.num_blocks)
    limits = msgspec.structs.replace(readies[0].limits, kv_cache_tokens=min(r.limits.kv_cache_tokens for r in readies))
    return msgspec.structs.replace(readies[0], num_blocks=smallest.num_blocks, limits=limits)
