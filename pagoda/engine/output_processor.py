"""Front-end bookkeeping: detokenize core outputs, apply stop strings, build RequestOutputs.

A user request with ``n > 1`` is fanned out into child requests ``"{i}_{id}"``; the
parent's output gathers them and is finished when every child is.

``SamplingParams.output_kind`` (vLLM's): CUMULATIVE outputs carry every child's text, tokens and logprobs so far;
DELTA outputs carry what is new since the parent's previous output (only the children with something new, the
prompt logprobs once), so the deltas of a request's outputs concatenate to its cumulative output (see
:func:`merge_delta`); FINAL_ONLY gives one cumulative output, when the request finishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pagoda.engine.detokenizer import IncrementalDetokenizer, decode_token
from pagoda.engine.messages import EngineCoreOutput, PooledData
from pagoda.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from pagoda.pooling.outputs import PoolingOutput, PoolingRequestOutput
from pagoda.sampling_params import RequestOutputKind, SamplingParams


@dataclass
class ChildState:
    index: int
    detok: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: str | None = None
    error_param: str | None = None  # see EngineCoreOutput.error_param
    # What the parent's emitted outputs carried so far (kept when stream_interval > 1 or for DELTA outputs):
    sent_tokens: int = 0  # tokens (and logprobs)
    sent_text: int = 0  # characters of the shown text
    sent_finished: bool = False  # this child's finish


@dataclass
class ParentState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: dict[str, ChildState]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    metrics: RequestMetrics
    final_only: bool = False
    num_cached_tokens: int = 0
    pooling: bool = False  # a pooling request: its output is ``pooled``, not tokens
    pooled: PooledData | None = None
    delta: bool = False  # output_kind DELTA: each output carries only what is new since the previous one
    sent_prompt_logprobs: bool = False  # (DELTA) an emitted output carried the prompt logprobs
    lora_request: Any = None  # the request's LoRARequest (None: the base model), reported on its outputs
    # ``children`` is in index order (child i is the i-th inserted), so outputs need no sorting.

    @property
    def finished(self) -> bool:
        if len(self.children) == 1:
            return next(iter(self.children.values())).finish_reason is not None
        return all(c.finish_reason is not None for c in self.children.values())


def child_id(parent_id: str, index: int, n: int) -> str:
    return parent_id if n == 1 else f"{index}_{parent_id}"


class OutputProcessor:
    def __init__(self, tokenizer: Any, stream_interval: int = 1) -> None:
        """``stream_interval`` (vLLM's ``--stream-interval``): above 1, a parent's output is emitted only when one of
        its children has its first token, ``stream_interval`` tokens since the last emitted output, or its finish
        (and always when the parent finishes); the tokens and text in between are carried by that output."""
        self.tokenizer = tokenizer
        self.stream_interval = stream_interval
        self.parents: dict[str, ParentState] = {}
        self.child_to_parent: dict[str, str] = {}
        # Since the last take_token_counts(): vLLM's prompt_tokens (the whole prompt of each request that got its
        # first token or its pooled output, cached tokens included) and generation_tokens (tokens added to the
        # outputs, i.e. what usage counts: none past a stop string, none for a request already finished)
        self._prompt_tokens = 0
        self._generation_tokens = 0

    def take_token_counts(self) -> tuple[int, int]:
        """(prompt tokens, generation tokens) counted since the last call (the counters' increments)."""
        out = (self._prompt_tokens, self._generation_tokens)
        self._prompt_tokens = self._generation_tokens = 0
        return out

    def add_request(
        self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
        final_only: bool = False, pooling: bool = False, lora_request: Any = None,
    ) -> list[str]:
        """Track a request. ``final_only`` (or ``params.output_kind`` FINAL_ONLY): no RequestOutput until it
        finishes, and that one cumulative (``final_only`` wins over DELTA, as vLLM's ``LLM.generate``);
        ``params.output_kind`` DELTA: outputs carry only what is new (see the module's docstring)."""
        final_only = final_only or params.output_kind is RequestOutputKind.FINAL_ONLY
        delta = not final_only and not pooling and params.output_kind is RequestOutputKind.DELTA
        children = {}
        for i in range(params.n):
            cid = child_id(request_id, i, params.n)
            detok = (
                IncrementalDetokenizer(self.tokenizer, prompt_ids, params.skip_special_tokens, params.stop,  # type: ignore[arg-type]
                                       params.include_stop_str_in_output, params.min_tokens)
                if params.detokenize
                else None
            )
            children[cid] = ChildState(
                i, detok,
                logprobs=[] if params.logprobs is not None else None,
                cumulative_logprob=0.0 if params.logprobs is not None else None,
            )
            self.child_to_parent[cid] = request_id
        plp: list[dict[int, Logprob] | None] | None = None
        if params.prompt_logprobs is not None:
            plp = [None] * max(len(prompt_ids), 1)
        self.parents[request_id] = ParentState(
            request_id, prompt, list(prompt_ids), params, children, plp, RequestMetrics(time.time()), final_only,
            pooling=pooling, delta=delta, lora_request=lora_request,
        )
        return list(children)

    def _lp_dict(
        self, ids: list[int], lps: list[float], chosen: int, chosen_lp: float, rank: int,
        ranks: list[int] | None = None, detokenize: bool = True,
    ) -> dict[int, Logprob]:
        """The chosen token and the top entries; ``ranks`` None means the top list is the top-k (1, 2, ...);
        without ``detokenize`` no entry has its text (``decoded_token`` None, as vLLM)."""
        tok = self.tokenizer if detokenize else None
        d = {chosen: Logprob(chosen_lp, rank, decode_token(tok, chosen) if tok is not None else None)}
        top_ranks = ranks if ranks is not None else range(1, len(ids) + 1)
        for r, t, v in zip(top_ranks, ids, lps, strict=True):
            if t not in d:
                d[t] = Logprob(v, r, decode_token(tok, t) if tok is not None else None)
        return d

    def process(self, outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Returns (outputs of parents that changed, child ids the core must stop)."""
        changed: dict[str, ParentState] = {}
        to_stop: list[str] = []
        now = time.time()
        for o in outputs:
            parent, stop = self.apply(o, now)
            if stop:
                to_stop.append(o.request_id)
            if parent is not None:
                changed[parent.request_id] = parent
        results = []
        for parent in changed.values():
            res = self.emit(parent, now)
            if res is not None:
                results.append(res)
        return results, to_stop

    def process_one(self, o: EngineCoreOutput) -> tuple[RequestOutput | None, bool]:
        """:meth:`process` of one output (the front end's per-output call): (its parent's output, if any; whether the
        core must stop ``o``'s request), without the lists and dict of the general case."""
        now = time.time()
        parent, stop = self.apply(o, now)
        return (self.emit(parent, now) if parent is not None else None), stop

    def apply(self, o: EngineCoreOutput, now: float) -> tuple[ParentState | None, bool]:
        """Apply one core output: (its parent when it changed, whether the core must stop ``o``'s request)."""
        pid = self.child_to_parent.get(o.request_id)
        if pid is None:
            return None, False
        parent = self.parents[pid]
        child = parent.children[o.request_id]
        if child.finish_reason is not None:
            return None, False
        if o.first_scheduled_time is not None and parent.metrics.first_scheduled_time is None:
            parent.metrics.first_scheduled_time = o.first_scheduled_time
        if child.index == 0:
            if o.num_cached_tokens:
                parent.num_cached_tokens = o.num_cached_tokens
            if o.prompt_logprobs is not None:
                self._add_prompt_logprobs(parent, o)
        if o.pooled is not None:
            parent.pooled = o.pooled
            self._prompt_tokens += len(parent.prompt_token_ids)
        elif not o.new_token_ids and o.finish_reason is None:
            # A prefill chunk's prompt logprobs, with no token yet: nothing to show. As vLLM's core (which sends an
            # output only with a token), the prompt logprobs reach a consumer whole, with the first token; a
            # cumulative output here would carry them with the prompt's later positions still None (a streamed
            # completion's echo with logprobs sent them so, while its unstreamed answer had them all).
            return None, False
        before = len(child.token_ids)
        stop = self._add_tokens(parent, child, o, now) and o.finish_reason is None
        added = len(child.token_ids) - before
        if added:
            self._generation_tokens += added
            if before == 0:
                self._prompt_tokens += len(parent.prompt_token_ids)
        if child.finish_reason is None and o.finish_reason is not None and child.detok is not None:
            # text held back for an incomplete character is the output's too; a stop string it completes wins
            self._stop_hit(child, child.detok.finish())
        if child.finish_reason is None and o.finish_reason is not None:
            child.finish_reason = o.finish_reason
            child.stop_reason = o.stop_reason
            child.error = o.error
            child.error_param = o.error_param
        return parent, stop

    def emit(self, parent: ParentState, now: float) -> RequestOutput | None:
        """The output of a parent that changed (None: it wants only its final one, it is not due under
        ``stream_interval``, or it is DELTA and nothing new can be shown); a finished parent is dropped."""
        finished = parent.finished
        if parent.final_only and not finished:
            return None
        if self.stream_interval > 1 and not finished and not self._due(parent):
            return None
        if parent.delta:
            out: RequestOutput | None = self._make_delta_output(parent, finished)
        else:
            out = self._make_output(parent, finished)
        if self.stream_interval > 1 or parent.delta:
            for c in parent.children.values():
                c.sent_tokens, c.sent_finished = len(c.token_ids), c.finish_reason is not None
        if finished:
            parent.metrics.finished_time = now
            self._drop(parent.request_id)
        return out

    def _due(self, parent: ParentState) -> bool:
        """With ``stream_interval`` > 1: a child of ``parent`` has its first token, that many new tokens or its
        finish since the last emitted output."""
        for c in parent.children.values():
            n = len(c.token_ids)
            if (n and not c.sent_tokens) or n - c.sent_tokens >= self.stream_interval or \
                    (c.finish_reason is not None and not c.sent_finished):
                return True
        return False

    def _add_prompt_logprobs(self, parent: ParentState, o: EngineCoreOutput) -> None:
        """Fill the parent's prompt logprobs from a chunk of them in ``o`` (if it carries one)."""
        p = o.prompt_logprobs
        if p is None or parent.prompt_logprobs is None:
            return
        for j, (lp, rk, ti, tv) in enumerate(zip(p.logprobs, p.ranks, p.top_ids, p.top_logprobs, strict=True)):
            pos = p.start_index + j
            parent.prompt_logprobs[pos] = self._lp_dict(ti, tv, parent.prompt_token_ids[pos], lp, rk,
                                                        detokenize=parent.params.detokenize)

    def _add_tokens(self, parent: ParentState, child: ChildState, o: EngineCoreOutput, now: float) -> bool:
        """Append ``o``'s new tokens (text, logprobs) to ``child``; True when a stop string ended it.

        On a stop string the child is finished here and later tokens of ``o`` are dropped.
        """
        # A token-level stop (EOS or a stop token id) ends the request with its last token; as in
        # vLLM, that token stays in token_ids but its text is left out unless
        # include_stop_str_in_output.
        skip_last_text = o.finish_reason == "stop" and not parent.params.include_stop_str_in_output
        new_ids = o.new_token_ids
        if not new_ids:
            return False
        metrics = parent.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = now
        metrics.last_token_time = now
        detok, lps = child.detok, child.logprobs
        if o.new_logprobs is None or lps is None:
            if detok is None:
                child.token_ids.extend(new_ids)
                return False
            if len(new_ids) == 1 and not skip_last_text:  # the common decode step: one token, its text
                child.token_ids.append(new_ids[0])
                return self._stop_hit(child, detok.add_token(new_ids[0]))
        last = len(new_ids) - 1
        for k, tok in enumerate(new_ids):
            child.token_ids.append(tok)
            if o.new_logprobs is not None and lps is not None:
                t = o.new_logprobs[k]
                lps.append(self._lp_dict(t.top_ids, t.top_logprobs, tok, t.logprob, t.rank, t.top_ranks,
                                         parent.params.detokenize))
                child.cumulative_logprob = (child.cumulative_logprob or 0.0) + t.logprob
            if detok is not None and not (skip_last_text and k == last):
                if self._stop_hit(child, detok.add_token(tok)):
                    return True
        return False

    @staticmethod
    def _stop_hit(child: ChildState, hit: str | None) -> bool:
        """A stop string matched: the child is finished here (later tokens of the step are dropped)."""
        if hit is None:
            return False
        # A stop string wins even when the core finished the request in this same
        # step (e.g. by length), as in vLLM; the core is told only if still running.
        child.finish_reason, child.stop_reason = "stop", hit
        return True

    def abort(self, request_id: str) -> list[str]:
        """Forget a parent; returns its child ids (for the core to abort)."""
        parent = self.parents.get(request_id)
        if parent is None:
            return []
        ids = list(parent.children)
        self._drop(request_id)
        return ids

    def aborted_output(self, parent: ParentState) -> RequestOutput | None:
        """The final output of a parent aborted while its consumer still waits (vLLM's final "abort" output):
        each child not yet finished ends with ``finish_reason`` "abort" and no new token; shaped as the parent's
        outputs are (cumulative, DELTA or FINAL_ONLY). None for a DELTA parent with nothing left to report."""
        for c in parent.children.values():
            if c.finish_reason is None:
                c.finish_reason = "abort"
        if parent.delta:
            return self._make_delta_output(parent, True)
        return self._make_output(parent, True)

    def _drop(self, pid: str) -> None:
        parent = self.parents.pop(pid, None)
        if parent:
            for cid in parent.children:
                self.child_to_parent.pop(cid, None)

    def _make_output(self, parent: ParentState, finished: bool) -> RequestOutput:
        if parent.pooling:
            return self._make_pooling_output(parent)  # type: ignore[return-value]
        comps = []
        error = error_param = None
        for c in parent.children.values():  # in index order
            text = c.detok.shown_text(c.finish_reason is not None) if c.detok else ""
            comps.append(CompletionOutput(c.index, text, list(c.token_ids),
                                          c.cumulative_logprob, list(c.logprobs) if c.logprobs is not None else None,
                                          c.finish_reason, c.stop_reason))
            if c.error and error is None:
                error, error_param = c.error, c.error_param
        return RequestOutput(
            parent.request_id, parent.prompt, parent.prompt_token_ids,
            list(parent.prompt_logprobs) if parent.prompt_logprobs is not None else None,
            comps, finished, parent.metrics, parent.num_cached_tokens, error, error_param, parent.lora_request,
        )

    @staticmethod
    def _make_delta_output(parent: ParentState, finished: bool) -> RequestOutput | None:
        """A DELTA output (vLLM's): for each child with new tokens or its finish since the previous output, those
        tokens, their logprobs and the text that became showable (``cumulative_logprob`` stays cumulative); the
        prompt logprobs ride on the first output. None when no child has anything new. Advances ``sent_text``
        (the caller advances ``sent_tokens`` / ``sent_finished``)."""
        comps = []
        error = error_param = None
        for c in parent.children.values():  # in index order
            done = c.finish_reason is not None
            if len(c.token_ids) == c.sent_tokens and (not done or c.sent_finished):
                continue
            text = ""
            if c.detok is not None:
                shown = c.detok.shown_text(done)
                text = shown[c.sent_text:]
                c.sent_text = max(c.sent_text, len(shown))
            lps = c.logprobs[c.sent_tokens:] if c.logprobs is not None else None
            comps.append(CompletionOutput(c.index, text, c.token_ids[c.sent_tokens:], c.cumulative_logprob, lps,
                                          c.finish_reason, c.stop_reason))
            if c.error and error is None:
                error, error_param = c.error, c.error_param
        if not comps:
            return None
        plp = None
        if parent.prompt_logprobs is not None and not parent.sent_prompt_logprobs:
            plp, parent.sent_prompt_logprobs = list(parent.prompt_logprobs), True
        return RequestOutput(parent.request_id, parent.prompt, parent.prompt_token_ids, plp, comps, finished,
                             parent.metrics, parent.num_cached_tokens, error, error_param, parent.lora_request)

    @staticmethod
    def _make_pooling_output(parent: ParentState) -> PoolingRequestOutput:
        child = next(iter(parent.children.values()))
        data = torch.empty(0)
        if parent.pooled is not None:
            data = torch.frombuffer(bytearray(parent.pooled.data), dtype=torch.float32).view(parent.pooled.shape)
        return PoolingRequestOutput(parent.request_id, PoolingOutput(data), parent.prompt_token_ids,
                                    finished=parent.finished, error=child.error)

    def has_unfinished(self) -> bool:
        return bool(self.parents)


def merge_delta(first: RequestOutput, later: RequestOutput) -> RequestOutput:
    """Two consecutive DELTA outputs of one request as one (vLLM's ``RequestOutput.add(aggregate=True)``): each
    completion's text, tokens and logprobs concatenated, the later one's finish and ``cumulative_logprob``; the
    completions in index order. ``first`` is updated and returned (it must not have been handed out)."""
    by_index = {c.index: c for c in first.outputs}
    for nc in later.outputs:
        c = by_index.get(nc.index)
        if c is None:
            by_index[nc.index] = nc
            continue
        c.text += nc.text
        c.token_ids = [*c.token_ids, *nc.token_ids]
        if nc.logprobs is not None:
            c.logprobs = [*(c.logprobs or []), *nc.logprobs]
        c.cumulative_logprob, c.finish_reason, c.stop_reason = nc.cumulative_logprob, nc.finish_reason, nc.stop_reason
    first.outputs = [by_index[i] for i in sorted(by_index)]
    if first.prompt_logprobs is None:
        first.prompt_logprobs = later.prompt_logprobs
    first.finished = first.finished or later.finished
    first.metrics, first.num_cached_tokens = later.metrics, later.num_cached_tokens
    if first.error is None:
        first.error, first.error_param = later.error, later.error_param
    return first
