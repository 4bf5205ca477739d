"""The engine core in its own process, talking typed msgpack over ZMQ.

The messages and their wire protocol are in :mod:`pagoda.engine.messages`; this module holds
only the process and its loop. The front end binds both sockets (ipc:// in a private 0700
temp dir) and the core connects, so the front end owns the addresses and their clean-up.

Busy loop of the core: drain every pending input message (add / abort / finish) →
``EngineCore.step()`` → send exactly one ``StepOutputs`` per step (the outputs of every
request in the batch plus the scheduler stats). With nothing to run it blocks on the
input socket for at most ``HEARTBEAT_S`` and then sends a ``Heartbeat``, so the front end
can tell "idle" from "dead or stuck". It exits when told to (``Shutdown``, SIGTERM),
when its parent process disappears, or on an unexpected error (after sending
``CoreFailed`` with the reason).

The process is started with the ``spawn`` method and imports its heavy modules (torch, the engine)
at once; its engine arguments (a dict of :class:`EngineArgs` fields and the log level: builtins) come
afterwards over a one-way pipe from the front end, and it resolves the config itself, so no engine
object crosses the process boundary. ``pagoda serve`` starts the core this way before its own imports
(:mod:`pagoda.engine.prelaunch`), so the two processes' imports overlap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from pagoda import envs
from pagoda.engine.admission import check_request_id_free
from pagoda.engine.gc_policy import freeze_startup_heap
from pagoda.engine.messages import (
    AbortRequests,
    AddLora,
    AddRequest,
    CoreFailed,
    EngineCoreOutput,
    EngineCoreOutputs,
    FinishRequests,
    Heartbeat,
    ListLoras,
    LoraAnswer,
    PrefixCacheReset,
    QueueTime,
    Ready,
    Rejected,
    RemoveLora,
    ResetPrefixCache,
    Shutdown,
    StepOutputs,
    encoder,
    input_decoder,
)
from pagoda.engine.spawn_sigint import set_sigint_policy, sigint_blocked
from pagoda.errors import ValidationError

logger = logging.getLogger("pagoda")

CORE_PROCESS_NAME = "pagoda-core"
"""The engine-core process's name in ``ps`` / ``top`` (API servers 1.. are ``pagoda-api<N>``)."""
HEARTBEAT_S = 1.0
"""An idle core sends a heartbeat this often; a busy one sends a message every step."""


# -------------------------------------------------------------------------------- process
def ipc_addresses(ipc_dir: str, index: int, client: int = 0) -> tuple[str, str]:
    """(input, output) socket addresses of replica ``index`` in the front end's private ipc dir; ``client``: the
    API server process (``--api-server-count``) that binds them (0: the one that started the core)."""
    return client_addresses(f"ipc://{ipc_dir}/input_{index}", f"ipc://{ipc_dir}/output_{index}", client)


def client_addresses(input_addr: str, output_addr: str, client: int) -> tuple[str, str]:
    """Client ``client``'s (input, output) addresses, from client 0's."""
    if client == 0:
        return input_addr, output_addr
    return f"{input_addr}_c{client}", f"{output_addr}_c{client}"


@dataclass(frozen=True)
class Attach:
    """Where API server process ``client`` (1.. of ``--api-server-count``) finds the engine cores that API server 0
    started: the ipc dir of their sockets and each core's pid (one per data-parallel replica). Such a front end
    binds its own socket pair to each (:func:`pagoda.engine.core_proc.client_addresses`), never starts or stops
    them, and leaves the ipc dir to API server 0."""

    ipc_dir: str
    core_pids: tuple[int, ...]
    client: int


class RemoteCoreProcess:
    """The part of a ``multiprocessing.Process`` the front end uses, for a core another process started: alive
    while its pid runs and is not a zombie (a core that died and its parent has not reaped yet)."""

    exitcode = None

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def is_alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except FileNotFoundError:
            return False
        except (OSError, IndexError):  # no /proc (not Linux): the pid exists
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass
            return True


def start_core_process(input_addr: str, output_addr: str, log_level: int = logging.INFO) -> tuple[Any, Any]:
    """Spawn the engine-core process; returns ``(process, connection)``. The core connects to both addresses at
    once (its outputs queue until the front end binds; the front end waits for the input connection too:
    ``CoreEngines.wait_ready``) and imports its modules, then waits for
    ``connection.send((engine_args_dict, log_level, num_clients))`` (``None``, or the front end going away: it exits
    quietly). With ``num_clients`` > 1 (``--api-server-count``) it also connects to clients 1.. at
    :func:`client_addresses`: its input socket takes every client's messages, and each client gets the outputs of
    the requests it sent (every message else goes to all).

    The child inherits the environment, so ``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY`` set for
    ``pagoda serve`` apply to the core (see "CPU notes" in docs/serving.md).
    """
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=run_engine_core,
        name="pagoda-engine-core",
        args=(recv, input_addr, output_addr, os.getpid(), log_level),
        daemon=True,
    )
    with sigint_blocked():  # the core takes Ctrl-C only once it ignores it (pagoda.engine.spawn_sigint)
        proc.start()
    recv.close()  # the child holds the read end now
    return proc, send


def _receive_engine_args(conn: Any, parent_pid: int) -> tuple[dict[str, Any], int, int] | None:
    """The front end's ``(engine_args, log_level, num_clients)``; None when it sent None, closed the pipe or died."""
    while os.getppid() == parent_pid:
        try:
            if conn.poll(0.5):
                return conn.recv()
        except (EOFError, OSError):
            return None
    return None


def _set_parent_death_signal() -> None:
    """Linux: have the kernel send SIGTERM to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # best effort; the ppid check below still works
        pass


def set_process_name(name: str) -> None:
    """Linux: the name ``ps`` / ``top`` show (``/proc/self/comm``, at most 15 bytes); best effort elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_NAME = 15
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except Exception:
        pass


class _Terminated(Exception):
    pass


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere). At the core's entry point: the
    interpreter's start, the spawn's unpickling and the module imports it needed."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


def _term_handler(args_given: list[bool]) -> Callable[[int, Any], None]:
    """The engine core's SIGTERM handler. Before the front end has sent the engine arguments (``args_given[0]``
    false: an early-started core the front end did not use, or one it stops while failing), the core has nothing
    to clean up and exits 0 at once, in the handler: raising there could land in a weakref callback or ``__del__``
    (the imports run both), where Python prints the exception as ignored and goes on. After that, one SIGTERM
    means stop (:class:`_Terminated`, which the core's clean-up catches); a second (the front end's escalation) must
    not break into the clean-up that the first began (an executor stopping its workers): the front end's SIGKILL
    bounds a stuck one."""

    def on_term(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not args_given[0]:
            os._exit(0)
        raise _Terminated()

    return on_term


def run_engine_core(args_conn: Any, input_addr: str, output_addr: str, parent_pid: int,
                    log_level: int = logging.INFO) -> None:
    """Entry point of the engine-core process (``args_conn``: see :func:`start_core_process`)."""
    age_at_entry = process_age_s()
    logging.basicConfig(level=log_level, format="%(levelname)s %(asctime)s %(name)s[core]: %(message)s",
                        datefmt="%H:%M:%S")
    logger.setLevel(log_level)
    # Ctrl-C goes to the whole process group; the API server decides when the core stops.
    set_sigint_policy(signal.SIG_IGN)

    args_given = [False]  # the front end has sent the engine arguments (before that, stopping is silent)
    signal.signal(signal.SIGTERM, _term_handler(args_given))
    _set_parent_death_signal()
    set_process_name(CORE_PROCESS_NAME)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return

    import zmq

    ctx = zmq.Context()
    in_sock = ctx.socket(zmq.PULL)
    in_sock.setsockopt(zmq.LINGER, 0)
    in_sock.connect(input_addr)
    out_sock = ctx.socket(zmq.PUSH)
    out_sock.setsockopt(zmq.LINGER, 2000)
    out_sock.setsockopt(zmq.SNDHWM, 0)
    out_sock.connect(output_addr)
    out_socks = [out_sock]  # one per API server process (client), in client order
    enc = encoder()
    configured = False  # create_config passed (its errors are the user's, which the front end reports too)
    serving = False  # Ready sent: a failure from here on is a bug or a fault, reported with its traceback
    from pagoda.engine.early_cuda import EarlyContext

    early_cuda = EarlyContext()  # device 0's CUDA context, made while torch imports
    try:
        t0 = time.perf_counter()
        from pagoda.config import EngineArgs
        from pagoda.engine.core import EngineCore

        t1 = time.perf_counter()
        received = _receive_engine_args(args_conn, parent_pid)
        args_conn.close()
        if received is None:  # an early-started core the front end did not use (pagoda.engine.prelaunch)
            _quiet_exit(in_sock, out_sock, ctx)
        args_given[0] = True
        engine_args, level, num_clients = received
        for client in range(1, num_clients):
            extra_in, extra_out = client_addresses(input_addr, output_addr, client)
            in_sock.connect(extra_in)
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 2000)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(extra_out)
            out_socks.append(sock)
        logging.getLogger().setLevel(level)
        logger.setLevel(level)
        t2 = time.perf_counter()
        cfg = EngineArgs(**engine_args).create_config()
        early_cuda.keep_for(cfg.device)
        configured = True
        t3 = time.perf_counter()
        if cfg.tensor_parallel_size * cfg.pipeline_parallel_size > 1:
            from pagoda.distributed.executor import set_death_handler

            out_addrs = [output_addr] + [client_addresses(input_addr, output_addr, c)[1] for c in range(1, num_clients)]
            set_death_handler(lambda message: _last_words(ctx, out_addrs, message))
        core = EngineCore(cfg)
        _attach_step_timeline(core)
        ready = enc.encode(Ready(os.getpid(), core.num_blocks, core.cfg.block_size, core.admission_limits(),
                                 core.startup_seconds))
        for sock in out_socks:
            sock.send(ready)
        serving = True
        started = "" if age_at_entry is None else f"process start to entry {age_at_entry:.1f} s, "
        logger.info("engine core ready (pid %d) in %.1f s (%simports %.1f s, waiting for the front end's "
                    "arguments %.1f s, config %.1f s, engine %.1f s)",
                    os.getpid(), time.perf_counter() - t0 + (age_at_entry or 0.0), started, t1 - t0, t2 - t1,
                    t3 - t2, core.startup_seconds)
        freeze_startup_heap("engine core")  # after Ready: the front end finishes its own start meanwhile
        _CoreLoop(core, in_sock, out_socks, enc, parent_pid).run()
        executor = core.runner.executor
        if executor is not None:  # stopped cleanly: stop the ranks (Ray: its own processes too) before os._exit
            executor.shutdown()
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM (multiprocessing's exit handler, the
        # parent-death signal) must not raise again inside the clean-up below
        if not args_given[0]:
            _quiet_exit(in_sock, out_sock, ctx)
        if "pagoda.distributed.executor" in sys.modules:  # its workers end now, and its rendezvous folder goes
            from pagoda.distributed.executor import shutdown_all

            shutdown_all()
        logger.info("engine core terminated by signal")
    except Exception as e:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a front end that stops us now needs no clean-up from here
        if serving or not isinstance(e, (ValueError, FileNotFoundError)):
            logger.exception("engine core failed")
        else:  # a start-up flag, model-folder or capacity error: its message says it all (the front end says it too)
            logger.error("engine core failed: %s", e)
            if configured:  # raised while building the engine: the traceback too, for --log-level DEBUG
                logger.debug("engine core failure", exc_info=True)
        failed = enc.encode(CoreFailed(f"{type(e).__name__}: {e}"))
        for sock in out_socks:
            with contextlib.suppress(Exception):
                # A prelaunched core can fail before its front end has bound the output socket (``serve`` still
                # importing): wait for it to take the reason, else the front end sees only an exit code.
                sock.setsockopt(zmq.LINGER, STARTUP_FAILURE_LINGER_MS if not serving else 2000)
                sock.send(failed, flags=zmq.NOBLOCK)
        _close(in_sock, out_socks, ctx)
        sys.exit(1)
    # Stopped cleanly: a SIGTERM now (multiprocessing's exit handler in a front end that did not wait for us) must
    # not raise _Terminated inside the close below, which would print a traceback for a clean stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _close(in_sock, out_socks, ctx)
    # Stopped cleanly: skip the interpreter's teardown of torch's module graph (a second or more of CPU,
    # which the API server would wait for on every shutdown); nothing is left to flush but the logs.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


STARTUP_FAILURE_LINGER_MS = 30_000
"""How long a core that failed while starting waits for its front end to read why (``CoreFailed``) before exiting."""


LAST_WORDS_CONNECT_S = 2.0
"""How long :func:`_last_words` waits, for all its new sockets together, for them to connect to the API servers."""


def _last_words(ctx: Any, out_addrs: list[str], message: str) -> NoReturn:
    """The rank monitor's handler (:func:`pagoda.distributed.executor.set_death_handler`), on the monitor's thread
    while the engine core's may be blocked for good in a collective: ``CoreFailed(message)`` to every API server on
    sockets of its own (a ZMQ socket belongs to one thread), then exit 1 without the blocked thread."""
    import zmq

    logger.error("engine core failed: %s", message)
    failed = encoder().encode(CoreFailed(message))
    deadline = time.monotonic() + LAST_WORDS_CONNECT_S
    for addr in out_addrs:
        sock = ctx.socket(zmq.PUSH)
        sock.connect(addr)
        if sock.poll(max(0, int((deadline - time.monotonic()) * 1000)), zmq.POLLOUT):
            sock.send(failed, flags=zmq.NOBLOCK)
    time.sleep(0.3)  # ZMQ's I/O thread writes the messages (IPC: well under a millisecond) before the exit
    logging.shutdown()
    os._exit(1)


def _close(in_sock: Any, out_socks: list[Any], ctx: Any) -> None:
    in_sock.close()
    for sock in out_socks:
        sock.close()
    ctx.term()


def _quiet_exit(in_sock: Any, out_sock: Any, ctx: Any) -> NoReturn:
    """Exit 0 without a word: a core stopped before it was given its arguments never started an engine."""
    in_sock.close(linger=0)
    out_sock.close(linger=0)
    ctx.term()
    os._exit(0)


def _attach_step_timeline(core: Any) -> None:
    """``PAGODA_STEP_TIMELINE``: record this core's steps (appended, labelled with its pid; line-buffered, so
    the ``os._exit`` at the end loses nothing)."""
    path = envs.step_timeline_path()
    if path:
        from pagoda.engine.step_timeline import StepTimeline

        core.step_timeline = StepTimeline(path, run=f"core-{os.getpid()}", append=True)
        logger.info("recording the step timeline to %s", path)


class _CoreLoop:
    """The busy loop. With several clients (API server processes, ``--api-server-count``), ``client_of`` maps each
    request in the core to the client that sent it, from its ``AddRequest`` until its finish, abort or refusal:
    a step's outputs and queue times go to their requests' clients, every client gets every step's message (empty
    but for the stats when none of its requests moved, so its watchdog sees the core alive), and heartbeats go
    to all. A request id already in the core is refused (two processes cannot tell each other which ids they use).
    """

    def __init__(self, core: Any, in_sock: Any, out_socks: list[Any], enc: msgspec.msgpack.Encoder,
                 parent_pid: int) -> None:
        import zmq

        self.zmq = zmq
        self.core = core
        self.in_sock = in_sock
        self.out_socks = out_socks
        self.multi = len(out_socks) > 1
        self.client_of: dict[str, int] = {}
        self.enc = enc
        self.dec = input_decoder()
        self.parent_pid = parent_pid
        self.poller = zmq.Poller()
        self.poller.register(in_sock, zmq.POLLIN)
        # request id -> monotonic time it was added, until it is first scheduled (queue-time metric).
        self.unscheduled: dict[str, float] = {}
        self.running = True

    def send(self, msg: Any, client: int = 0) -> None:
        self.out_socks[client].send(self.enc.encode(msg))

    def _client(self, client: object) -> int:
        """``client`` when it names one of this core's clients, else 0 (a bad index never loses the reply)."""
        return client if isinstance(client, int) and 0 <= client < len(self.out_socks) else 0

    def broadcast(self, msg: Any) -> None:
        frame = self.enc.encode(msg)
        for sock in self.out_socks:
            sock.send(frame)

    def send_step(self, outs: EngineCoreOutputs, scheduled: list[QueueTime]) -> None:
        """One step's message: as it is with one client, else split by client (see the class docstring)."""
        if not self.multi:
            self.send(StepOutputs(outs, scheduled))
            return
        n = len(self.out_socks)
        client_of = self.client_of
        queued: list[list[QueueTime]] = [[] for _ in range(n)]
        for q in scheduled:  # before the finished are forgotten below
            queued[client_of.get(q.request_id, 0)].append(q)
        per_client: list[list[EngineCoreOutput]] = [[] for _ in range(n)]
        for o in outs.outputs:
            per_client[client_of.get(o.request_id, 0) if o.finish_reason is None
                       else client_of.pop(o.request_id, 0)].append(o)
        for client in range(n):
            self.send(StepOutputs(EngineCoreOutputs(per_client[client], outs.stats), queued[client]), client)

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent_pid

    def handle(self, raw: bytes) -> bool:
        """Apply one input message; returns True if it changed the request set."""
        try:
            msg = self.dec.decode(raw)
        except msgspec.DecodeError as e:  # a bug in the front end, never user input
            logger.error("dropping an undecodable input message: %s", e)
            self._reject_undecodable(raw, e)
            return False
        if isinstance(msg, AddRequest):
            r = msg.request
            client = self._client(msg.client)
            registered = False  # client_of holds this request (not another client's of the same id)
            try:
                if self.multi:
                    check_request_id_free(r.request_id, r.request_id in self.client_of)
                    self.client_of[r.request_id] = client
                    registered = True
                self.core.add_request(r)
                self.unscheduled[r.request_id] = time.monotonic()
            except ValidationError as e:  # an admission failure only the core could detect
                if registered:
                    del self.client_of[r.request_id]
                self.send(Rejected(r.request_id, str(e), e.parameter, e.code), client)
            except Exception as e:  # the request is bad in a way we did not foresee: refuse it only
                logger.exception("add_request(%s) failed", r.request_id)
                if registered:
                    del self.client_of[r.request_id]
                self.send(Rejected(r.request_id, f"internal error while adding the request: {e}", internal=True),
                          client)
        elif isinstance(msg, AbortRequests):
            self.core.abort_requests(msg.request_ids)
            for rid in msg.request_ids:
                self.unscheduled.pop(rid, None)
                self.client_of.pop(rid, None)
        elif isinstance(msg, FinishRequests):
            self.core.finish_requests(msg.request_ids)
            for rid in msg.request_ids:
                self.client_of.pop(rid, None)
        elif isinstance(msg, ResetPrefixCache):
            self.send(PrefixCacheReset(msg.call_id, self.core.reset_prefix_cache()), self._client(msg.client))
        elif isinstance(msg, (AddLora, RemoveLora, ListLoras)):
            self.send(self._lora_call(msg), self._client(msg.client))
        elif isinstance(msg, Shutdown):
            self.running = False
        return True

    def _lora_call(self, msg: AddLora | RemoveLora | ListLoras) -> LoraAnswer:
        """Run one LoRA call on the core; a refused adapter (``ValueError``) is answered with its message."""
        from pagoda.lora.peft import LoRANotFoundError

        try:
            if isinstance(msg, AddLora):
                return LoraAnswer(msg.call_id, self.core.add_lora(msg.lora_request))
            if isinstance(msg, RemoveLora):
                return LoraAnswer(msg.call_id, self.core.remove_lora(msg.lora_int_id))
            return LoraAnswer(msg.call_id, True, sorted(self.core.list_loras()))
        except ValueError as e:
            return LoraAnswer(msg.call_id, False, error=str(e), not_found=isinstance(e, LoRANotFoundError))

    def _reject_undecodable(self, raw: bytes, e: Exception) -> None:
        """An AddRequest that does not decode is refused by id, so its stream does not wait forever."""
        try:
            msg = msgspec.msgpack.decode(raw)
            rid = msg["request"]["request_id"] if msg.get("type") == "add" else None
            client = msg.get("client", 0)
        except Exception:
            return
        if isinstance(rid, str):
            self.send(Rejected(rid, f"internal error: the engine core could not decode the request: {e}",
                               internal=True), self._client(client))

    def drain(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for input, then apply everything pending."""
        changed = False
        if self.poller.poll(timeout_ms):
            while True:
                try:
                    raw = self.in_sock.recv(flags=self.zmq.NOBLOCK, copy=True)
                except self.zmq.Again:
                    break
                changed |= self.handle(raw)
                if not self.running:
                    break
        return changed

    def _hold(self) -> None:
        """Keep admitting requests until the core's pacer says the next step must be launched
        (:mod:`pagoda.engine.launch_pacing`); returns at once when there is no hold."""
        until = self.core.launch_hold_until(time.perf_counter())
        if until is None:
            return
        while self.running:
            left = until - time.perf_counter()
            if left <= 0:
                return
            self.drain(int(left * 1000))  # whole milliseconds, then polls without waiting

    def queue_times(self, step_start: float) -> list[QueueTime]:
        if not self.unscheduled:
            return []
        out = []
        reqs = self.core.scheduler.requests
        wall = time.time() - time.monotonic()  # monotonic -> wall clock
        for rid, t0 in list(self.unscheduled.items()):
            req = reqs.get(rid)
            if req is None:  # finished within its first step
                out.append(QueueTime(rid, max(0.0, step_start - t0), wall + step_start))
            elif req.first_scheduled_time is not None:
                out.append(QueueTime(rid, max(0.0, req.first_scheduled_time - t0), wall + req.first_scheduled_time))
            else:
                continue
            del self.unscheduled[rid]
        return out

    def run(self) -> None:
        last_beat = time.monotonic()
        last_parent_check = last_beat
        while self.running:
            busy = self.core.has_unfinished_requests()
            changed = self.drain(0 if busy else int(HEARTBEAT_S * 1000))
            if not self.running:
                break
            now = time.monotonic()
            if now - last_parent_check >= HEARTBEAT_S:
                last_parent_check = now
                if not self.parent_alive():
                    logger.warning("API server process is gone; engine core exiting")
                    return
            if self.core.has_unfinished_requests():
                self._hold()
                if not self.running:
                    break
                step_start = time.monotonic()
                outs = self.core.step()
                self.send_step(outs, self.queue_times(step_start))
                last_beat = time.monotonic()
            elif changed or now - last_beat >= HEARTBEAT_S:
                # Idle: report liveness (a tensor- or pipeline-parallel rank that died meanwhile raises WorkerDied:
                # the core fails now and /health says so, not at the next request), and fresh stats after aborts.
                executor = self.core.runner.executor
                if executor is not None:
                    executor.check_alive()
                self.broadcast(Heartbeat(self.core.stats()))
                last_beat = now
                if changed and not self.core.has_unfinished_requests():
                    try:
                        self.core.check_integrity()
                    except AssertionError:  # a bookkeeping bug: report it loudly, keep serving
                        logger.exception("KV cache integrity check failed while idle")


def engine_args_to_dict(args: Any) -> dict[str, Any]:
    """EngineArgs -> a dict of builtins for the spawn arguments."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
