"""Iteration-level, phase-free scheduler.

Every request carries ``num_computed_tokens`` and ``num_tokens``; each step hands
out a token budget (``max_num_batched_tokens``) so the first catches up with the
second. A prompt chunk, a whole prompt, a decode token and the recompute of a
preempted request are the same operation. Running requests are served first
(in arrival order), then waiting ones (FCFS) while budget, ``max_num_seqs`` and
free blocks allow. When a running request cannot get a block, the most recently
arrived running request is preempted (its blocks freed, its progress reset: it
is recomputed later from prompt + outputs so far) and goes back to the front of
the waiting queue. With prefix caching, an admitted request starts from the leading
blocks found in the cache (``num_computed_tokens`` = the hit tokens, the last token
always computed), and full blocks are registered when the step that writes them is
scheduled (a reader in a later step, or later in the same step, runs after the write).

Parallel sampling (n > 1): the samples after the first are *forks* of the first (the
leader). They wait, holding nothing, until the leader's prompt is computed; then each
takes the leader's prompt blocks by reference and recomputes only the last prompt token
(to sample its own first token), so the prompt is computed once. A partially filled
shared block is copied first (``SchedulerOutput.block_copies``, applied before the next
forward). A fork that finds no free block or no free seat joins the waiting queue as a
plain request instead (where prefix caching still finds the leader's full blocks).

Async scheduling: ``schedule()`` may run while the previous step is still on the GPU
(``update_from_output`` of step N-1 comes after ``schedule()`` of step N). A request in
that step is planned from ``num_computed_tokens + num_inflight_tokens`` to ``num_tokens +
num_placeholders`` (see :mod:`pagoda.core.request`): its next decode is scheduled before
its last token is known, and the model runner takes that token from the previous step's
device output. A request whose token in flight is its last (``max_tokens`` or the context
length) is not scheduled again; one that stops on EOS or a stop token spends one extra
row, dropped when its update comes. A request preempted while in flight keeps the token it
was sampling (its context was complete) and is not re-admitted until that token is known.
In synchronous use both counters are 0 at every ``schedule()``, and nothing changes.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.request import Request, RequestStatus
from pagoda.errors import EngineInvariantError


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    # Position of the first new token (== num_computed_tokens at scheduling time).
    start: int
    # True when this chunk reaches the end of the known tokens: a token is sampled.
    sample: bool


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted_ids: list[str] = field(default_factory=list)
    num_batched_tokens: int = 0
    # (src, dst) KV blocks to copy before the forward runs (copy-on-write of forks).
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    # Host KV tier, run before the copies and the forward, in this order:
    # (device block, host block) stores of evicted blocks, then (host, device) loads.
    swap_out: list[tuple[int, int]] = field(default_factory=list)
    swap_in: list[tuple[int, int]] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_chunked_prefill: bool = True,
    ) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions_total = 0
        # Parallel sampling: leader id -> forks waiting for its prompt; copies not yet run.
        self.forks: dict[str, list[Request]] = {}
        self.num_pending_forks = 0
        self.pending_copies: list[tuple[int, int]] = []

    # ------------------------------------------------------------ admission
    def add_request(self, request: Request, fork_of: str | None = None) -> None:
        """Queue a request.

        Invariant: the request can be served (it fits ``max_model_len`` and the whole KV cache,
        and a prompt over the token budget only comes with chunked prefill) and its id is new.
        Admission (:mod:`pagoda.engine.admission`) refuses other requests before they get here;
        one that arrives anyway would wait forever, so it raises ``EngineInvariantError``.

        ``fork_of``: the id of another sample of the same prompt (n > 1); the request then
        shares that one's prompt blocks once they are computed (see the module docstring).
        """
        if request.request_id in self.requests:
            raise EngineInvariantError(f"request id {request.request_id!r} is already in the scheduler")
        total = request.num_prompt_tokens + request.max_tokens
        too_long_prompt = not self.enable_chunked_prefill and request.num_prompt_tokens > self.max_num_batched_tokens
        if total > self.max_model_len or self.kv.blocks_needed(total) > self.kv.usable_blocks or too_long_prompt:
            raise EngineInvariantError(
                f"request {request.request_id!r} can never be scheduled ({request.num_prompt_tokens} prompt + "
                f"{request.max_tokens} new tokens; max_model_len {self.max_model_len}, KV cache "
                f"{self.kv.usable_blocks * self.kv.block_size} tokens, token budget {self.max_num_batched_tokens}, "
                f"chunked prefill {'on' if self.enable_chunked_prefill else 'off'}): admission should have refused it"
            )
        self.requests[request.request_id] = request
        leader = self.requests.get(fork_of) if fork_of is not None else None
        if (
            leader is not None
            and not leader.status.finished
            and leader.num_prompt_tokens == request.num_prompt_tokens
            and leader.num_computed_tokens < leader.num_prompt_tokens
            and leader.all_token_ids[: leader.num_prompt_tokens] == request.prompt_token_ids
        ):
            self.forks.setdefault(leader.request_id, []).append(request)
            self.num_pending_forks += 1
            return
        self.waiting.append(request)

    def _release_forks(self, leader: Request) -> None:
        """The leader's prompt is computed (or it ended early): start its waiting forks."""
        forks = self.forks.pop(leader.request_id, None)
        if not forks:
            return
        self.num_pending_forks -= len(forks)
        P = leader.num_prompt_tokens
        can_share = leader.request_id in self.kv.req_blocks and leader.num_computed_tokens >= P
        now = time.monotonic()
        for f in forks:
            if f.status.finished:
                continue
            res = False
            if can_share and len(self.running) < self.max_num_seqs:
                res = self.kv.fork(leader, f, P - 1)
            if res is False:
                self.waiting.appendleft(f)
                continue
            if res is not None:
                self.pending_copies.append(res)
            f.status = RequestStatus.RUNNING
            f.first_scheduled_time = now
            f.num_cached_tokens = max(0, leader.num_cached_tokens)
            self.running.append(f)

    def abort_requests(self, request_ids: list[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED) -> list[Request]:
        """Finish requests now (abort or an external stop). Frees their blocks at once."""
        done = []
        for rid in request_ids:
            req = self.requests.get(rid)
            if req is None or req.status.finished:
                continue
            if req.status == RequestStatus.RUNNING:
                self.running.remove(req)
            elif not self._drop_pending_fork(req):
                try:
                    self.waiting.remove(req)
                except ValueError:
                    pass
            req.status = status
            self._finish(req)
            done.append(req)
        return done

    def _drop_pending_fork(self, req: Request) -> bool:
        for lid, forks in self.forks.items():
            if req in forks:
                forks.remove(req)
                self.num_pending_forks -= 1
                if not forks:
                    del self.forks[lid]
                return True
        return False

    def _finish(self, req: Request) -> None:
        if req.request_id in self.forks:  # ended before its prompt was computed
            self._release_forks(req)
        self.kv.free(req)
        self.requests.pop(req.request_id, None)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running) + self.num_pending_forks

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + self.num_pending_forks

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running or self.num_pending_forks)

    # ------------------------------------------------------------- schedule
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        now = time.monotonic()
        scheduled_ids: set[str] = set()

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            start = req.num_computed_tokens + req.num_inflight_tokens
            end = req.num_tokens + req.num_placeholders
            num_new = min(end - start, budget)
            if num_new <= 0 or (req.num_placeholders and self._last_token_in_flight(req, end)):
                i += 1
                continue
            # Blocks for the tokens in flight are already held; allocation counts from the computed ones.
            while not self.kv.allocate_slots(req, req.num_inflight_tokens + num_new):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted_ids.append(victim.request_id)
                if victim is req:
                    break
            else:
                out.scheduled.append(self._make(req, num_new))
                scheduled_ids.add(req.request_id)
                budget -= num_new
                i += 1
                continue
            break  # the request preempted itself: nothing more fits

        if not out.preempted_ids:
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                req = self.waiting[0]
                if req.num_placeholders:
                    break  # preempted while its token was in flight: wait for that token
                # A waiting request holds no blocks: reuse the leading cached ones, if any.
                cached = self.kv.get_computed_blocks(req)
                host = self.kv.get_host_hits(req, len(cached))
                num_new = req.num_tokens - (len(cached) + len(host)) * self.kv.block_size
                if num_new > budget:
                    if not self.enable_chunked_prefill:
                        break
                    num_new = budget
                if not self.kv.allocate_slots(req, num_new, cached, host):
                    break
                if self.kv.enable_prefix_caching:
                    self.kv.prefix_cache_queries += req.num_tokens
                    self.kv.prefix_cache_hits += req.num_computed_tokens
                if req.num_cached_tokens < 0:
                    req.num_cached_tokens = req.num_computed_tokens
                self.waiting.popleft()
                req.status = RequestStatus.RUNNING
                if req.first_scheduled_time is None:
                    req.first_scheduled_time = now
                self.running.append(req)
                out.scheduled.append(self._make(req, num_new))
                budget -= num_new

        out.num_batched_tokens = self.max_num_batched_tokens - budget
        if out.scheduled:
            if self.pending_copies:
                out.block_copies, self.pending_copies = self.pending_copies, []
            out.swap_out, out.swap_in = self.kv.take_swaps()
        return out

    def _make(self, req: Request, num_new: int) -> ScheduledRequest:
        start = req.num_computed_tokens + req.num_inflight_tokens
        sample = start + num_new == req.num_tokens + req.num_placeholders
        req.num_inflight_tokens += num_new
        req.num_placeholders += sample
        # Full blocks this step writes become findable now (a token in flight is not known yet).
        self.kv.cache_full_blocks(req, start + num_new)
        return ScheduledRequest(req, num_new, start, sample)

    def _last_token_in_flight(self, req: Request, end: int) -> bool:
        """The token being sampled for ``req`` ends it by length: nothing to schedule after it."""
        return req.num_output_tokens + req.num_placeholders >= req.max_tokens or end >= self.max_model_len

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.num_inflight_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(req)

    # --------------------------------------------------------------- update
    def update_from_output(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Advance progress, append sampled tokens, apply token-level stops.

        Returns requests that finished in this step (their blocks already freed).
        """
        finished = []
        for s in out.scheduled:
            req = s.request
            if req.status == RequestStatus.RUNNING:
                req.num_inflight_tokens -= s.num_new_tokens
                req.num_computed_tokens += s.num_new_tokens
                if req.request_id in self.forks and req.num_computed_tokens >= req.num_prompt_tokens:
                    self._release_forks(req)
            elif req.status.finished:  # finished or aborted while the step ran: nothing from it counts
                req.num_inflight_tokens = req.num_placeholders = 0
                continue
            elif not (s.sample and req.num_placeholders):
                continue  # preempted mid-prompt: that chunk is recomputed
            # else: preempted (async scheduling) after this step was launched; its token is valid.
            if not s.sample:
                continue
            req.num_placeholders -= 1
            token = sampled[req.request_id]
            req.append_output_token(token)
            was_running = req.status == RequestStatus.RUNNING
            if req.check_stop(self.max_model_len):
                if was_running:
                    self.running.remove(req)
                else:
                    self.waiting.remove(req)
                self._finish(req)
                finished.append(req)
        return finished

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        return self.abort_requests(request_ids, status)

    def check_integrity(self) -> None:
        self.kv.check_integrity()
        if not self.has_unfinished_requests() and self.kv.pool.num_used_blocks != 0:
            raise AssertionError(f"idle engine holds {self.kv.pool.num_used_blocks} blocks")
