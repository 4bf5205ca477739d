"""The engine core's side of structured outputs: compile off the step, one matcher per sequence, bitmasks.

* :meth:`StructuredOutputManager.grammar_for` starts compiling a request's grammar on a worker
  thread and returns its :class:`RequestGrammar` at once. Compiled grammars are cached per
  :class:`GrammarKey` (kind, spec, whitespace and additionalProperties settings), so a repeated
  schema compiles once and n > 1 samples share one compile. The engine core keeps a request out
  of the scheduler until :meth:`RequestGrammar.ready` (vLLM's ``WAITING_FOR_FSM``): the scheduler
  never waits on a compile.
* Each sequence owns its matcher (n > 1: one per sample). It advances by the tokens the step kept
  (:meth:`RequestGrammar.accept_tokens`); a preempted request keeps its matcher, since its output
  tokens are kept and only its KV is recomputed.
* :meth:`StructuredOutputManager.grammar_bitmask` builds a step's bitmask: one row per sampled
  logits row, in the runner's order (requests that sample, in scheduling order, each with its
  ``num_sample_rows``), all-allowed for unconstrained rows, with the list of rows a grammar filled
  (:class:`~pagoda.structured_output.step_bitmask.StepBitmask`, rows in a reused, on a GPU pinned, host buffer
  sent to the device asynchronously); None when no grammar filled a row.

* Reasoning (``reasoning_parser`` set, i.e. ``--reasoning-parser``): the grammar applies to the answer only,
  as vLLM's ``should_advance``. A sequence whose prompt did not already close the reasoning
  (:func:`pagoda.reasoning.token_ids.prompt_ends_reasoning`) starts *reasoning*: its bitmask rows stay
  all-allowed and its matcher does not move. The kept token equal to the end tag (``</think>``, one token id,
  resolved from the tokenizer at start-up) ends the reasoning; the matcher starts from its initial state on
  the tokens after it. The state lives on the sequence's :class:`RequestGrammar`, so it survives preemption
  (output tokens are kept) and each of n samples has its own. Speculative decoding drafts for a constrained
  request only once its reasoning has ended (the end tag is never inside a draft).
  A constraint with ``_enable_in_reasoning`` set (what ``/v1/completions`` sends: it returns the whole text, never
  splitting the reasoning off) skips the rule: constrained from the first token, whatever the output is.
* Speculative decoding: a verify's ``1 + k`` rows are filled for the positions after each of its ``k`` proposals
  (:meth:`RequestGrammar.fill_bitmask` walks the matcher through them and back), so a row masks exactly what the
  non-speculative step at that position would.

The backend (and the tokenizer it needs) is created on the worker thread by the first compile.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from pagoda.reasoning.token_ids import (
    ReasoningTokenIds,
    prompt_ends_reasoning,
    reasoning_end_index,
    reasoning_token_ids,
)
from pagoda.structured_output.backend import GrammarBackend, Matcher
from pagoda.structured_output.params import GrammarKey, StructuredOutputsConfig, StructuredOutputsParams
from pagoda.structured_output.step_bitmask import BitmaskBuffer, StepBitmask

if TYPE_CHECKING:
    from pagoda.config import EngineConfig
    from pagoda.core.scheduler import SchedulerOutput

COMPILE_TIMEOUT_S = 30.0
"""A grammar still compiling after this long fails its request (admission already bounded the parse)."""
_CACHE_SIZE = 256


class RequestGrammar:
    """One sequence's grammar: its compile (shared) and, once compiled, its own matcher."""

    def __init__(self, key: GrammarKey, compiled: Future[Any], backend: Any,
                 reasoning: ReasoningTokenIds | None = None, prompt_token_ids: Sequence[int] = (),
                 refused: str | None = None) -> None:
        self.key = key
        self._compiled = compiled
        self._backend = backend  # callable -> GrammarBackend (created by the first compile)
        self._matcher: Matcher | None = None
        self.submitted = time.monotonic()
        self._refused = refused  # why this request cannot be served (checked like a failed compile)
        self._reasoning = reasoning
        # False while the output is still reasoning: no bitmask, the matcher does not advance.
        self.reasoning_ended = reasoning is None or prompt_ends_reasoning(prompt_token_ids, reasoning)

    @property
    def compiled(self) -> Future[Any]:
        return self._compiled

    def ready(self) -> bool:
        return self._compiled.done()

    def error(self) -> str | None:
        """Why the compile failed (None while compiling or after success)."""
        if self._refused is not None:
            return self._refused
        if not self._compiled.done():
            return None if time.monotonic() - self.submitted < COMPILE_TIMEOUT_S else (
                f"the {self.key.kind} grammar did not compile within {COMPILE_TIMEOUT_S:g} s")
        e = self._compiled.exception()
        return None if e is None else f"the {self.key.kind} grammar failed to compile: {e}"

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            self._matcher = self._backend().matcher(self._compiled.result())
        return self._matcher

    def accept_tokens(self, tokens: Sequence[int]) -> int:
        """Advance by ``tokens`` in order; returns how many were accepted (stops at the first refused).
        Reasoning tokens (up to and including the end tag) pass without touching the matcher."""
        skip = 0
        if not self.reasoning_ended:
            assert self._reasoning is not None
            end = reasoning_end_index(tokens, self._reasoning)
            if end < 0:
                return len(tokens)
            self.reasoning_ended = True
            skip = end + 1
        m = self.matcher
        for i in range(skip, len(tokens)):
            if not m.accept_token(tokens[i]):
                return i
        return len(tokens)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int, draft: Sequence[int] = ()) -> int:
        """Rows ``row .. row + len(draft)``: the allowed tokens now and after each draft token
        (a speculative step verifies ``len(draft) + 1`` positions); the matcher ends where it began.
        Returns how many rows, from ``row``, were written (each whole); the others are left as they were, for the
        caller to keep all-allowed. Filling stops at a draft token the grammar refuses (the verifier rejects that
        token anyway) and at a terminated matcher. While reasoning, nothing is filled."""
        if not self.reasoning_ended:
            if draft:  # the end tag inside a draft would need the grammar from there on
                raise ValueError("a constrained request does not speculate while reasoning")
            return 0
        m = self.matcher
        accepted = 0
        filled = 0
        for i in range(len(draft) + 1):
            if m.is_terminated():
                break
            m.fill_bitmask(bitmask, row + i)
            filled += 1
            if i == len(draft) or not m.accept_token(draft[i]):
                break
            accepted += 1
        if accepted:
            m.rollback(accepted)
        return filled

    def valid_prefix(self, draft: Sequence[int]) -> int:
        """How many of ``draft``'s first tokens the grammar allows in order (a proposal is cut there: the verifier
        would reject the first refused token and everything after it); the matcher ends where it began."""
        if not self.reasoning_ended:
            raise ValueError("a constrained request does not speculate while reasoning")
        m = self.matcher
        n = 0
        for t in draft:
            if not m.accept_token(t):
                break
            n += 1
        if n:
            m.rollback(n)
        return n

    def forced_tokens(self, k: int) -> list[int]:
        """Up to ``k`` tokens spelling the text the grammar forces next (its jump-forward string, tokenized on its
        own), cut where the grammar refuses one; empty while reasoning or where the grammar leaves a choice. A
        draft, not a decision: the model may spell the same text in other tokens, which the verifier then keeps."""
        if k <= 0 or not self.reasoning_ended:
            return []
        text = self.matcher.jump_forward_string()
        if not text:
            return []
        toks = self._backend().encode(text)[:k]
        return toks[: self.valid_prefix(toks)]

    def rollback(self, num_tokens: int) -> None:
        if not self.reasoning_ended:
            raise ValueError("cannot roll back a grammar that has not started (the request is still reasoning)")
        self.matcher.rollback(num_tokens)

    def is_terminated(self) -> bool:
        return self.reasoning_ended and self.matcher.is_terminated()


class StructuredOutputManager:
    def __init__(self, cfg: EngineConfig, vocab_size: int) -> None:
        self.cfg = cfg
        self.config: StructuredOutputsConfig = cfg.structured_outputs
        self.vocab_size = vocab_size
        self._bitmasks: BitmaskBuffer | None = None  # made with the backend (its vocabulary sets the width)
        self._pool: ThreadPoolExecutor | None = None
        self._backend: GrammarBackend | None = None
        self._backend_lock = threading.Lock()
        self._cache: OrderedDict[GrammarKey, Future[Any]] = OrderedDict()
        # --reasoning-parser: the end tag's token id (or why it has none; constrained requests then fail).
        self.reasoning: ReasoningTokenIds | str | None = None
        if self.config.reasoning_parser:
            from pagoda.engine.tokenizer import load_tokenizer

            self.reasoning = reasoning_token_ids(self.config.reasoning_parser, load_tokenizer(cfg))

    def backend(self) -> GrammarBackend:
        with self._backend_lock:
            if self._backend is None:
                self._backend = create_backend(self.cfg, self.vocab_size)
            return self._backend

    def _compile(self, key: GrammarKey) -> Any:
        return self.backend().compile(key)

    def grammar_for(self, params: StructuredOutputsParams, prompt_token_ids: Sequence[int] = ()) -> RequestGrammar:
        """Start (or reuse) the compile of ``params``' grammar; never blocks. ``prompt_token_ids`` decide
        whether the output starts reasoning (see the module docstring; not with ``_enable_in_reasoning``)."""
        key = GrammarKey.of(params, self.config)
        fut = self._cache.get(key)
        if fut is None or (fut.done() and fut.exception() is not None):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pagoda-grammar")
            fut = self._cache[key] = self._pool.submit(self._compile, key)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        if params._enable_in_reasoning:  # the whole output is the answer: constrained from the first token
            return RequestGrammar(key, fut, self.backend)
        if isinstance(self.reasoning, str):
            return RequestGrammar(key, fut, self.backend, refused=f"structured outputs with a reasoning parser: "
                                                                  f"{self.reasoning}")
        return RequestGrammar(key, fut, self.backend, self.reasoning, prompt_token_ids)

    def grammar_bitmask(self, sched: SchedulerOutput) -> StepBitmask | None:
        """The step's bitmask rows (see the module docstring), or None when no grammar fills a row (nothing
        constrained, or every constrained sequence still reasoning, terminated or finished)."""
        sampled = [s for s in sched.scheduled if s.sample]
        if not any(s.request.grammar is not None and s.request.grammar.reasoning_ended for s in sampled):
            return None
        buffer = self._bitmask_buffer()
        bitmask = buffer.take(sum(s.num_sample_rows for s in sampled))
        filled: list[int] = []
        row = 0
        for s in sampled:
            g = s.request.grammar
            if g is not None and not s.request.status.finished:  # a finished request's row is dropped
                if s.num_sample_rows != 1 + len(s.spec_token_ids):
                    raise ValueError(f"request {s.request.request_id}: {s.num_sample_rows} sampled rows for "
                                     f"{len(s.spec_token_ids)} proposals; a constrained row needs its draft")
                # a verify: one row per position, after each draft token (rows past a refused one stay open)
                filled.extend(range(row, row + g.fill_bitmask(bitmask, row, s.spec_token_ids)))
            row += s.num_sample_rows
        if not filled:
            return None
        buffer.reset_rows(bitmask, filled)
        return StepBitmask(buffer.to_device(bitmask), filled, buffer.vocab_size)

    def _bitmask_buffer(self) -> BitmaskBuffer:
        if self._bitmasks is None:
            # A step's rows are sampled before the next step's are filled, except with pipeline parallelism (up
            # to pipeline_parallel_size steps in flight): one slot more than the steps that may hold one.
            cfg = self.cfg
            self._bitmasks = BitmaskBuffer(self.backend().vocab_size, cfg.device, initial_rows=cfg.max_num_seqs,
                                           num_slots=max(2, cfg.pipeline_parallel_size + 1))
        return self._bitmasks

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def create_backend(cfg: EngineConfig, vocab_size: int) -> GrammarBackend:
    """The configured backend, built for the engine's tokenizer and ``vocab_size`` (the logits' width)."""
    from pagoda.engine.tokenizer import eos_token_ids, load_tokenizer

    tok = load_tokenizer(cfg)
    stops = eos_token_ids(cfg, tok)
    from pagoda.structured_output.xgrammar_backend import XgrammarBackend

    return XgrammarBackend(tok, vocab_size, stops)
