"""Iteration-level, phase-free scheduler.

Every request carries ``num_computed_tokens`` and ``num_tokens``; each step hands
out a token budget (``max_num_batched_tokens``) so the first catches up with the
second. A prompt chunk, a whole prompt, a decode token and the recompute of a
preempted request are the same operation. Running requests are served first,
then waiting ones while budget, ``max_num_seqs`` and free blocks allow, both in the
order of the scheduling policy (:mod:`pagoda.core.request_queue`: ``fcfs``, or
``priority``: lower ``(priority, arrival)`` first). When a running request cannot get
a block, the last running request in that order (fcfs: the latest to start running;
priority: the lowest priority) is preempted (its blocks freed, its progress reset: it
is recomputed later from prompt + outputs so far) and goes back to the waiting queue
(fcfs: at the front). With prefix caching, an admitted request starts from the leading
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

This is the synchronous scheduler: ``update_from_output`` of a step comes before the next
``schedule()``. Asynchronous scheduling (the next step scheduled while the previous one is
still on the device) is :class:`pagoda.core.async_scheduler.AsyncScheduler`, which overrides
the hooks marked below (``_span``, ``_can_extend``, ``_can_admit``, ``_on_scheduled``,
``_preempt``, ``_advance``).

Speculative decoding: a decoding request's proposed tokens (``Request.spec_token_ids``) extend
its span like known tokens, so a verify is one more chunk: the step computes the last known token
and the proposals (``ScheduledRequest.spec_token_ids``, the ones the budget let in) and samples
``1 + len(spec_token_ids)`` rows. ``update_from_output`` appends the accepted tokens and the bonus
token in order, stops at the first that ends the request (dropping the rest from ``sampled``), and
sets ``num_computed_tokens`` back over the rejected positions: their blocks stay allocated and are
overwritten by the next step. Proposed tokens are never hashed for prefix caching (registration
only covers known tokens), so a cached block never holds a rejected token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.request import Request, RequestStatus
from pagoda.core.request_queue import create_request_queue
from pagoda.errors import EngineInvariantError
from pagoda.spec_decode.metrics import SpecDecodingStats

if TYPE_CHECKING:
    from pagoda.structured_output.step_bitmask import StepBitmask


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    # Position of the first new token (== num_computed_tokens at scheduling time).
    start: int
    # True when this chunk reaches the end of the known tokens: tokens are sampled.
    sample: bool
    # Logits rows sampled when ``sample``: the last ``num_sample_rows`` rows of the chunk
    # (1 today; a verified speculative step needs one per proposed token + 1).
    num_sample_rows: int = 1
    # Speculative decoding: the proposed tokens this step verifies (positions after the known ones).
    spec_token_ids: list[int] = field(default_factory=list)
    # Prompt logprobs this step reports, decided by the scheduler: (first position, count);
    # position p's logits give prompt token p + 1's logprob.
    prompt_logprobs: tuple[int, int] | None = None
    # Blocks registered in the prefix cache when this step was scheduled, whose K/V this step writes: a request
    # of a later step may hit them before this one completes (async scheduling), so a failure of this step must
    # fail their holders too (EngineCore._fail).
    registered_blocks: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted_ids: list[str] = field(default_factory=list)
    num_batched_tokens: int = 0
    # KV transfers the runner makes before the forward, in this order: the host tier's (device block, host block)
    # stores of evicted blocks, the (src, dst) copies of forks' partial blocks (copy-on-write), the host tier's
    # (host, device) loads. Each reads its source before a later one could overwrite it: a store reads a block
    # that a copy or a load may reuse as its destination; a copy reads a block freed since (its leader finished)
    # that a load may reuse.
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)
    swap_in: list[tuple[int, int]] = field(default_factory=list)
    # Structured outputs: packed token bitmask [sampled rows, ceil(V / 32)] int32, one row per logits row
    # the runner samples (in its order), with the rows a grammar filled; None when no row is constrained. Set by
    # the engine core.
    grammar_bitmask: StepBitmask | None = None

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
        scheduling_policy: str = "fcfs",
        long_prefill_token_threshold: int = 0,
        max_loras: int | None = None,
    ) -> None:
        """``max_loras``: distinct LoRA adapters the running requests may use at once (None: LoRA is off; see
        :meth:`_lora_blocked`)."""
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        # > 0: no request computes more than this many tokens in one step (vLLM's rule): a long prompt is
        # prefilled in chunks of this size, so the steps it shares with running decodes stay short.
        self.long_prefill_token_threshold = long_prefill_token_threshold
        self.waiting = create_request_queue(scheduling_policy)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions_total = 0
        # Parallel sampling: leader id -> forks waiting for its prompt, each such fork's id -> its leader's id
        # (kept together: a fork is in one iff it is in the other); copies not yet run.
        self.forks: dict[str, list[Request]] = {}
        self.fork_leader: dict[str, str] = {}
        self.pending_copies: list[tuple[int, int]] = []
        self.spec_stats = SpecDecodingStats()
        self.max_loras = max_loras

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
            self.fork_leader[request.request_id] = leader.request_id
            return
        self.waiting.add_request(request)

    def _release_forks(self, leader: Request) -> None:
        """The leader's prompt is computed (or it ended early): start its waiting forks."""
        forks = self.forks.pop(leader.request_id, None)
        if not forks:
            return
        for f in forks:
            del self.fork_leader[f.request_id]
        P = leader.num_prompt_tokens
        can_share = leader.request_id in self.kv.req_blocks and leader.num_computed_tokens >= P
        now = time.monotonic()
        for f in forks:
            if f.status.finished:
                continue
            res: tuple[int, int] | bool | None = False
            if can_share and len(self.running) < self.max_num_seqs:
                res = self.kv.fork(leader, f, P - 1)
            if res is False:
                self.waiting.prepend_request(f)
                continue
            if isinstance(res, tuple):
                self.pending_copies.append(res)
            f.status = RequestStatus.RUNNING
            f.first_scheduled_time = now
            f.num_cached_tokens = max(0, leader.num_cached_tokens)
            self.running.append(f)

    def abort_requests(
        self, request_ids: list[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> list[Request]:
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
                    self.waiting.remove_request(req)
                except ValueError:
                    pass
            req.status = status
            self._finish(req)
            done.append(req)
        return done

    def _drop_pending_fork(self, req: Request) -> bool:
        """Remove ``req`` from its leader's pending forks; False when it is not a pending fork."""
        lid = self.fork_leader.pop(req.request_id, None)
        if lid is None:
            return False
        forks = self.forks[lid]
        forks.remove(req)
        if not forks:
            del self.forks[lid]
        return True

    def _finish(self, req: Request) -> None:
        if req.request_id in self.forks:  # ended before its prompt was computed
            self._release_forks(req)
        self.kv.free(req)
        self.requests.pop(req.request_id, None)

    @property
    def num_pending_forks(self) -> int:
        """Forks waiting for their leader's prompt (they are in neither queue)."""
        return len(self.fork_leader)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running) + self.num_pending_forks

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + self.num_pending_forks

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running or self.num_pending_forks)

    def room_for_arrival(self) -> bool:
        """Whether a request arriving now could still be admitted by the next :meth:`schedule`: a seat left after
        the running and waiting requests, and token budget left after one token per running request and the
        waiting requests' uncomputed prompts (each capped as :meth:`_capped` caps it). Exact on seats, an estimate
        on tokens, for launch pacing only (engine/launch_pacing.py): prefix-cache hits of waiting prompts and
        running requests' prefill chunks are not counted, nor free KV blocks; a wrong answer only moves a hold
        (timing), never what a step computes."""
        if len(self.running) + self.num_waiting >= self.max_num_seqs:
            return False
        budget = self.max_num_batched_tokens - len(self.running)
        for req in self.waiting:
            if budget <= 0:
                break
            budget -= self._capped(req.num_tokens - req.num_computed_tokens)
        return budget > 0

    # ------------------------------------------------------------- schedule
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted_ids:
            budget = self._schedule_waiting(out, budget)
        out.num_batched_tokens = self.max_num_batched_tokens - budget
        if out.scheduled:
            if self.pending_copies:
                out.block_copies, self.pending_copies = self.pending_copies, []
            out.swap_out, out.swap_in = self.kv.take_swaps()
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        """Running requests in the policy's order; preempt the last one when blocks run out.
        Returns the budget left."""
        self.waiting.order_running(self.running)
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            start, end = self._span(req)
            num_new = min(self._capped(end - start), budget)
            if num_new <= 0 or not self._can_extend(req, end):
                i += 1
                continue
            # Blocks for tokens scheduled but not yet computed are already held: count from the computed ones.
            while not self.kv.allocate_slots(req, start - req.num_computed_tokens + num_new):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted_ids.append(victim.request_id)
                if victim is req:
                    break
            else:
                out.scheduled.append(self._make(req, num_new))
                budget -= num_new
                i += 1
                continue
            break  # the request preempted itself: nothing more fits
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> int:
        """Admit waiting requests in the policy's order while budget, seats and blocks allow. Returns the
        budget left. A request whose LoRA adapter cannot join the running ones (:meth:`_lora_blocked`) is passed
        over this step, keeping its place in the queue."""
        now = time.monotonic()
        skipped: list[Request] = []
        try:
            return self._admit_waiting(out, budget, now, skipped)
        finally:
            for r in reversed(skipped):  # back in front, in their order (priority: placed by their key)
                self.waiting.prepend_request(r)

    def _lora_blocked(self, req: Request, skipped: list[Request]) -> bool:
        """Whether waiting ``req`` must wait for a LoRA slot: its adapter is not one the running requests use and
        those already use ``max_loras`` adapters; or an adapter request before it in the queue was passed over for
        that reason (first come, first served among adapter requests: none waits forever while later ones of a
        running adapter keep arriving). Base-model requests are never blocked. Invariant kept: the running requests
        use at most ``max_loras`` adapters, so every step's batch fits the device slots."""
        aid = req.adapter_id
        if aid is None or self.max_loras is None:
            return False
        if any(r.adapter_id is not None for r in skipped):
            return True
        running = {r.adapter_id for r in self.running if r.adapter_id is not None}
        return aid not in running and len(running) >= self.max_loras

    def num_lora_deferred(self) -> int:
        """Waiting requests that :meth:`_lora_blocked` holds back now (its rule over the queue in admission order):
        the "deferred" share of vLLM's ``num_requests_waiting_by_reason``. O(waiting); 0 without LoRA."""
        if self.max_loras is None:
            return 0
        running = {r.adapter_id for r in self.running if r.adapter_id is not None}
        full, n, blocked = len(running) >= self.max_loras, 0, False
        for req in self.waiting:
            if req.adapter_id is None:
                continue
            blocked = blocked or (full and req.adapter_id not in running)
            n += blocked
        return n

    def _admit_waiting(self, out: SchedulerOutput, budget: int, now: float, skipped: list[Request]) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting.peek_request()
            if self._lora_blocked(req, skipped):
                skipped.append(self.waiting.pop_request())
                continue
            if not self._can_admit(req):
                break
            # A waiting request holds no blocks: reuse the leading cached ones, if any.
            cached = self.kv.get_computed_blocks(req)
            host = self.kv.get_host_hits(req, len(cached))
            num_new = self._capped(req.num_tokens - (len(cached) + len(host)) * self.kv.block_size)
            if num_new > budget:
                if not self.enable_chunked_prefill:
                    break
                num_new = budget
            if not self.kv.allocate_slots(req, num_new, cached, host):
                break
            device_hits = len(cached) * self.kv.block_size  # the host's loads count as external hits
            if self.kv.enable_prefix_caching and req.num_preemptions:  # a re-admission: vLLM keeps it apart
                self.kv.preempted_prefix_cache_queries += req.num_tokens
                self.kv.preempted_prefix_cache_hits += device_hits
            elif self.kv.enable_prefix_caching:
                self.kv.prefix_cache_queries += req.num_tokens
                self.kv.prefix_cache_hits += device_hits
            if self.kv.host is not None:
                self.kv.external_prefix_cache_queries += req.num_tokens
                self.kv.external_prefix_cache_hits += len(host) * self.kv.block_size
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = req.num_computed_tokens
            self.waiting.pop_request()
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            self.running.append(req)
            out.scheduled.append(self._make(req, num_new))
            budget -= num_new
        return budget

    def _capped(self, num_new: int) -> int:
        """``num_new`` tokens of one request, at most ``long_prefill_token_threshold`` when that is set."""
        cap = self.long_prefill_token_threshold
        return min(num_new, cap) if cap > 0 else num_new

    def _make(self, req: Request, num_new: int) -> ScheduledRequest:
        start, end = self._span(req)
        known_end = end - len(req.spec_token_ids)
        sample = start + num_new >= known_end
        spec = req.spec_token_ids[: max(0, start + num_new - known_end)]  # the proposals the budget let in
        plp = self._take_prompt_logprobs(req, start, num_new)
        s = ScheduledRequest(req, num_new, start, sample, 1 + len(spec), spec_token_ids=spec, prompt_logprobs=plp)
        self._on_scheduled(s)
        # Full blocks this step writes become findable now (a token not yet known is not hashed).
        s.registered_blocks = self.kv.cache_full_blocks(req, start + num_new)
        return s

    @staticmethod
    def _take_prompt_logprobs(req: Request, start: int, num_new: int) -> tuple[int, int] | None:
        """Prompt positions in ``[start, start + num_new)`` whose logprobs are not reported yet,
        as (first, count); marks them reported (a recomputed chunk does not report them twice)."""
        if req.sampling_params.prompt_logprobs is None:
            return None
        # Position p predicts prompt token p + 1; positions before prompt_logprobs_next - 1 were reported.
        first = max(start, req.prompt_logprobs_next - 1)
        last = min(start + num_new, req.num_prompt_tokens - 1)
        if last <= first:
            return None
        req.prompt_logprobs_next = last + 1
        return first, last - first

    # Hooks (the synchronous behaviour; AsyncScheduler overrides them).
    def _span(self, req: Request) -> tuple[int, int]:
        """Positions a step may cover for ``req``: from its first uncomputed token to its last known one
        and its proposed tokens after it."""
        return req.num_computed_tokens, req.num_tokens + len(req.spec_token_ids)

    def _can_extend(self, req: Request, end: int) -> bool:
        """Whether a running request with tokens left to compute may be scheduled now."""
        return True

    def _can_admit(self, req: Request) -> bool:
        """Whether the waiting request at the head of the queue may be admitted now."""
        return True

    def _on_scheduled(self, s: ScheduledRequest) -> None:
        """Called for each request as it is put into a step."""

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.spec_token_ids = []
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.prepend_request(req)

    # --------------------------------------------------------------- update
    def update_from_output(self, out: SchedulerOutput, sampled: dict[str, list[int]]) -> list[Request]:
        """Advance progress, append sampled tokens, apply token-level stops.

        ``sampled``: each sampling request's new tokens, in order. Tokens after the one that
        ends a request are dropped from its list, so ``sampled`` then holds what was kept.
        Returns requests that finished in this step (their blocks already freed).
        """
        finished = []
        for s in out.scheduled:
            if not self._advance(s) or not s.sample:
                continue
            req = s.request
            if req.pooling_params is not None:  # pooled in this step: done, nothing sampled
                self._finish_pooled(req)
                finished.append(req)
                continue
            tokens = sampled[req.request_id]
            if s.spec_token_ids:
                self._roll_back_rejected(s, len(tokens) - 1)
            kept = self._append_tokens(req, tokens)
            if kept < len(tokens):
                del tokens[kept:]
            if req.status.finished:
                finished.append(req)
        return finished

    def _advance(self, s: ScheduledRequest) -> bool:
        """Record a step's progress for one request; False when its tokens do not count
        (the request finished or was aborted while the step ran)."""
        req = s.request
        if req.status != RequestStatus.RUNNING:
            return False
        req.num_computed_tokens += s.num_new_tokens
        if req.request_id in self.forks and req.num_computed_tokens >= req.num_prompt_tokens:
            self._release_forks(req)
        return True

    def _finish_pooled(self, req: Request) -> None:
        req.status = RequestStatus.FINISHED_STOPPED
        self.running.remove(req)
        self._finish(req)

    def _roll_back_rejected(self, s: ScheduledRequest, num_accepted: int) -> None:
        """A verify accepted its first ``num_accepted`` proposals: the positions after them were
        computed from rejected tokens, so they do not count (their slots are rewritten later)."""
        req = s.request
        num_draft = len(s.spec_token_ids)
        if not 0 <= num_accepted <= num_draft:
            raise EngineInvariantError(f"request {req.request_id}: {num_accepted + 1} tokens for {num_draft} proposals")
        self.spec_stats.observe(num_draft, num_accepted)
        req.spec_token_ids = []
        if req.status == RequestStatus.RUNNING:
            req.num_computed_tokens -= num_draft - num_accepted

    def _append_tokens(self, req: Request, tokens: list[int]) -> int:
        """Append tokens until one ends the request (then finish it). Returns how many were appended."""
        n = len(tokens)
        if (n > 1 and req.num_output_tokens + n < req.max_tokens and req.num_tokens + n < self.max_model_len
                and req.eos_token_ids.isdisjoint(tokens) and req.stop_token_ids.isdisjoint(tokens)):
            # A verify's tokens, none of which can end the request: appended at once (what the loop below
            # would do, without a check per token).
            req.output_token_ids.extend(tokens)
            req.all_token_ids.extend(tokens)
            return n
        was_running = req.status == RequestStatus.RUNNING
        for i, token in enumerate(tokens):
            req.append_output_token(token)
            if req.check_stop(self.max_model_len):
                if was_running:
                    self.running.remove(req)
                else:
                    self.waiting.remove_request(req)
                self._finish(req)
                return i + 1
        return len(tokens)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        return self.abort_requests(request_ids, status)

    def check_integrity(self) -> None:
        self.kv.check_integrity()
        pending = {f.request_id: lid for lid, forks in self.forks.items() for f in forks}
        if pending != self.fork_leader or any(not forks for forks in self.forks.values()):
            raise AssertionError(f"pending forks {pending} disagree with their leader map {self.fork_leader}")
        if not self.has_unfinished_requests() and self.kv.pool.num_used_blocks != 0:
            raise AssertionError(f"idle engine holds {self.kv.pool.num_used_blocks} blocks")
