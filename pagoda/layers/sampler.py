"""Batched token sampling with vLLM's order of operations.

0. Structured outputs: the grammar's token bitmask (tokens it does not allow to -inf).
1. Raw log-probabilities (what ``logprobs`` reports) from the model's logits: before any
   processing, so allowed_token_ids and bad_words do not change them (as vLLM). A row with
   ``logprob_token_ids`` reports those ids in place of the top-k.
2. allowed_token_ids (every other token to -inf), bad_words (a token sequence whose prefix ends
   the output has its last token banned), logit_bias, and min_tokens masking (EOS / stop
   tokens forbidden until min_tokens).
3. repetition (prompt+output), presence and frequency (output only) penalties.
4. Greedy rows take the argmax. Others: temperature, min_p, top_k, top_p, then a draw by
   the exponential race ``argmax(p / E)``, ``E ~ Exp(1)``. A seeded request draws its
   noise from its own generator, so its tokens do not depend on the rest of the batch.

Rows are the requests that sample this step, in scheduling order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pagoda.core.request import Request
from pagoda.layers.argmax import argmax_rows
from pagoda.sampling_params import SamplingParams
from pagoda.structured_output.bitmask import apply_token_bitmask


@dataclass
class SampleResult:
    token_ids: list[int]
    # For each row: None, or (sampled_logprob, sampled_rank, top_ids, top_logprobs, top_ranks); top_ranks
    # is None when the top list is the real top-k (ranks 1, 2, ...), and the ids' true ranks for a
    # ``logprob_token_ids`` request.
    logprobs: list[tuple[float, int, list[int], list[float], list[int] | None] | None]


def to_device(values: list, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host list as a device tensor without waiting for the device (``torch.tensor(..., device=cuda)``
    synchronises the stream: the host would stall until the step's forward is done). The staging tensor is
    pinned on CUDA: a copy from pageable memory may wait for the kernels already queued. torch's pinned
    allocator keeps the block until the copy has run, so nothing needs to outlive the call."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def _rank(lp_row: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return (lp_row > value.unsqueeze(-1)).sum(-1) + 1


def _generator(req: Request, device: torch.device) -> torch.Generator | None:
    if req.sampling_params.seed is None:
        return None
    g = req.generator
    if g is None or g.device != device:
        g = torch.Generator(device=device)
        g.manual_seed(req.sampling_params.seed % (2**63))
        req.generator = g
    return g


def plain_greedy(r: Request) -> bool:
    """Greedy with nothing that changes or reports logits: the argmax is the whole answer."""
    return r.sampling_params.structured_outputs is None and greedy_argmax_only(r)


def greedy_argmax_only(r: Request) -> bool:
    """Greedy with nothing that changes or reports logits but (possibly) a grammar's bitmask: once it is applied,
    the argmax is the whole answer (:func:`sample_on_device` does nothing else for such a row)."""
    p = r.sampling_params
    return (
        p.sampling_type_greedy and p.logprobs is None and not p.logit_bias and p.repetition_penalty == 1.0
        and not p.presence_penalty and not p.frequency_penalty
        and p.allowed_token_ids is None and not p.bad_words_token_ids
        and not (p.min_tokens and r.num_output_tokens < p.min_tokens)
    )


def needs_host_history(r: Request) -> bool:
    """Sampling that reads the request's output tokens on the host (penalties, min_tokens, bad_words).

    Async scheduling must not run such a request ahead of its last token being known. Structured
    outputs are not in it: the engine core fills a step's bitmask after the previous step's tokens
    advanced the matchers (:mod:`pagoda.engine.core`).
    """
    p = r.sampling_params
    return bool(p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty or p.min_tokens
                or p.bad_words_token_ids)


# chosen_lp [R], ranks [R], top_v [R, k] and top_i [R, k] (None when no row asks for top tokens), and
# top_r [R, k], the true ranks of the top entries (None unless a row asks for logprob_token_ids).
LogprobTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


@dataclass
class DeviceSample:
    """A sample whose results are still on the device; :meth:`finish` brings them to the host.

    ``tokens`` [S] (int64, device) is final once the step's kernels run, so the next step
    may read it on the device before the host has it. ``finish`` blocks on the device.
    """

    tokens: torch.Tensor
    want_lp: list[int]  # rows reporting logprobs, and the k each asks for
    ks: list[int]
    lp_tensors: LogprobTensors | None = None
    host: tuple[torch.Tensor, ...] | None = None  # pinned copies started by start_copy
    event: torch.cuda.Event | None = None
    done_at: float | None = None  # perf_counter() when the wait for the device ended (None: no wait yet / on CPU)

    def start_copy(self) -> None:
        """Start the device -> host copies (pinned, async) and record an event after them."""
        if self.tokens.device.type != "cuda":
            return
        srcs = (self.tokens, *(t for t in (self.lp_tensors or ()) if t is not None))
        self.host = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in srcs)
        for h, t in zip(self.host, srcs, strict=True):
            h.copy_(t, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def _host_results(self) -> tuple[torch.Tensor, LogprobTensors | None]:
        """Wait for :meth:`start_copy`'s copies; the host tensors in the device tensors' shape."""
        assert self.host is not None and self.event is not None, "start_copy() did not run"
        self.event.synchronize()
        self.done_at = time.perf_counter()
        if self.lp_tensors is None:
            return self.host[0], None
        copied = iter(self.host[1:])  # start_copy copied the tensors that are not None, in order
        c, r, v, i, tr = (next(copied) if t is not None else None for t in self.lp_tensors)
        assert c is not None and r is not None
        return self.host[0], (c, r, v, i, tr)

    def finish(self) -> SampleResult:
        if self.host is not None:
            tokens, lp = self._host_results()
        else:
            tokens, lp = self.tokens, self.lp_tensors
        token_list = tokens.tolist()
        lp_out: list[tuple[float, int, list[int], list[float], list[int] | None] | None] = [None] * len(token_list)
        if lp is not None:
            chosen_lp, ranks, top_v, top_i, top_r = lp
            chosen_lp_l, ranks_l = chosen_lp.tolist(), ranks.tolist()
            top_v_l = top_v.tolist() if top_v is not None else None
            top_i_l = top_i.tolist() if top_i is not None else None
            top_r_l = top_r.tolist() if top_r is not None else None
            for j, (i, n) in enumerate(zip(self.want_lp, self.ks, strict=True)):
                lp_out[i] = (
                    chosen_lp_l[j],
                    ranks_l[j],
                    top_i_l[j][:n] if top_i_l else [],
                    top_v_l[j][:n] if top_v_l else [],
                    top_r_l[j][:n] if top_r_l else None,
                )
        return SampleResult(token_list, lp_out)


def sample(logits: torch.Tensor, reqs: list[Request], grammar_bitmask: torch.Tensor | None = None) -> SampleResult:
    """logits: float32 [S, V] (modified in place)."""
    return sample_on_device(logits, reqs, grammar_bitmask).finish()


def sample_on_device(logits: torch.Tensor, reqs: list[Request],
                     grammar_bitmask: torch.Tensor | None = None) -> DeviceSample:
    """Like :func:`sample`, without waiting for the device (no host synchronisation).

    ``grammar_bitmask`` [S, ceil(V / 32)] (structured outputs, one row per logits row) is applied
    first, so reported logprobs are those of the constrained distribution, as vLLM's."""
    if grammar_bitmask is not None:
        apply_token_bitmask(logits, grammar_bitmask)
    params = [r.sampling_params for r in reqs]
    want_lp = [p.logprobs is not None for p in params]
    raw_lp = torch.log_softmax(logits, dim=-1) if any(want_lp) else None  # before any processing (step 1)
    apply_logits_processing(logits, reqs)
    tokens = sample_tokens(logits, reqs)
    if raw_lp is None:
        return DeviceSample(tokens, [], [])
    rows = [i for i, w in enumerate(want_lp) if w]
    ks = [params[i].logprobs or 0 for i in rows]
    chosen = [params[i].logprob_token_ids for i in rows]
    return DeviceSample(tokens, rows, ks, _logprob_tensors(raw_lp, tokens, rows, max(ks), chosen))


def apply_logits_processing(logits: torch.Tensor, reqs: list[Request]) -> None:
    """Steps 2 and 3 (token sets, logit_bias, min_tokens, penalties), in place on ``logits`` [S, V]."""
    V = logits.shape[1]
    device = logits.device
    # Rows that need logit processing (most batches have none: one cheap pass decides).
    special = [
        i for i, r in enumerate(reqs)
        if (p := r.sampling_params).logit_bias or (p.min_tokens and r.num_output_tokens < p.min_tokens)
        or p.repetition_penalty != 1.0 or ((p.presence_penalty or p.frequency_penalty) and r.output_token_ids)
        or p.allowed_token_ids is not None or p.bad_words_token_ids
    ]
    for i in special:
        r = reqs[i]
        p = r.sampling_params
        # --- 2. token sets, bias and min_tokens
        if p.allowed_token_ids is not None:
            _keep_only(logits[i], p.allowed_token_ids)
        if p.bad_words_token_ids:
            banned_words = bad_word_bans(p.bad_words_token_ids, r.output_token_ids)
            if banned_words:
                logits[i, banned_words] = float("-inf")
        if p.logit_bias:
            ids = to_device([t for t in p.logit_bias if 0 <= t < V], device, torch.long)
            if len(ids):
                vals = to_device([p.logit_bias[t] for t in p.logit_bias if 0 <= t < V], device)
                logits[i].index_add_(0, ids, vals)
        if p.min_tokens and r.num_output_tokens < p.min_tokens:
            banned = [t for t in r.min_tokens_banned if 0 <= t < V]
            if banned:
                logits[i, banned] = float("-inf")
        # --- 3. penalties
        if p.repetition_penalty != 1.0:
            seen = to_device(sorted(set(r.all_token_ids)), device, torch.long)
            seen = seen[seen < V]
            vals = logits[i, seen]
            logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and r.output_token_ids:
            out_ids = to_device(r.output_token_ids, device, torch.long)
            counts = torch.bincount(out_ids, minlength=V)[:V].to(logits.dtype)
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def sample_tokens(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Step 4: one token id per row ([S], int64, on the device) from the processed ``logits``."""
    params = [r.sampling_params for r in reqs]
    greedy = [p.sampling_type_greedy for p in params]
    if all(greedy):
        return greedy_argmax(logits)
    device = logits.device
    probs = sampling_probs(logits, params)
    noise = torch.empty_like(probs)
    seeded = [i for i, r in enumerate(reqs) if r.sampling_params.seed is not None and not greedy[i]]
    noise.exponential_()
    for i in seeded:
        noise[i].exponential_(generator=_generator(reqs[i], device))
    tokens = (probs / noise).argmax(dim=-1)
    if any(greedy):
        gmask = to_device(greedy, device)
        tokens = torch.where(gmask, greedy_argmax(logits), tokens)
    return tokens


def greedy_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)``, the same indices (the first maximal value of a row; a NaN counts as maximal), by
    :func:`pagoda.layers.argmax.argmax_rows` (tests/test_sampling.py checks ties and NaNs against argmax)."""
    return argmax_rows(logits)


def sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The distribution step 4 draws from: temperature (1 for greedy rows), min_p, top_k, top_p,
    softmax. [S, V] float32 on the device of ``logits``."""
    device = logits.device
    temps = to_device([1.0 if p.sampling_type_greedy else p.temperature for p in params], device)
    x = logits / temps.unsqueeze(1)
    min_ps = [p.min_p for p in params]
    if any(min_ps):
        probs = torch.softmax(x, dim=-1)
        thr = probs.max(dim=-1, keepdim=True).values * to_device(min_ps, device).unsqueeze(1)
        x = x.masked_fill(probs < thr, float("-inf"))
    x = _apply_top_k_top_p(x, params)
    return torch.softmax(x, dim=-1)


def _apply_top_k_top_p(x: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Mask (to -inf) the tokens outside each row's top_k and top_p, as HF's ``TopKLogitsWarper`` then
    ``TopPLogitsWarper`` (and vLLM's sampler) do; the best token always stays.

    Where top_p's cut falls inside a run of equal logits, the lower token ids stay: the sort is stable, so the
    kept set is the same on every device (an unstable CUDA sort orders ties its own way, and HF's and vLLM's
    rule leaves that order to the sort)."""
    V = x.shape[1]
    device = x.device
    top_ks = [p.top_k if 0 < p.top_k < V else V for p in params]
    top_ps = [p.top_p for p in params]
    if not (any(k < V for k in top_ks) or any(tp < 1.0 for tp in top_ps)):
        return x
    sorted_x, order = x.sort(dim=-1, descending=True, stable=True)
    # Below the k-th largest value (tokens tied with it stay: HF's and vLLM's rule)
    kth = sorted_x.gather(1, to_device([k - 1 for k in top_ks], device, torch.long).unsqueeze(1))
    drop = sorted_x < kth
    if any(tp < 1.0 for tp in top_ps):
        # HF's and vLLM's rule: a token goes when it and the less likely ones hold at most 1 - top_p (summed
        # from the least likely up, as theirs: of two equally likely tokens at top_p=0.5, one stays).
        sp = torch.softmax(sorted_x.masked_fill(drop, float("-inf")), dim=-1)
        tail = sp.flip(-1).cumsum(dim=-1).flip(-1)
        drop |= tail <= to_device([1.0 - tp for tp in top_ps], device).unsqueeze(1)
    drop[:, 0] = False
    sorted_x = sorted_x.masked_fill(drop, float("-inf"))
    return torch.empty_like(x).scatter_(1, order, sorted_x)


def _keep_only(row: torch.Tensor, allowed: list[int]) -> None:
    """allowed_token_ids: every other token of ``row`` [V] to -inf (ids are in the vocabulary)."""
    ids = to_device(allowed, row.device, torch.long)
    kept = row[ids]
    row.fill_(float("-inf"))
    row[ids] = kept


def bad_word_bans(sequences: list[list[int]], output: list[int]) -> list[int]:
    """The last tokens of the bad-word sequences whose other tokens end ``output`` (vLLM's rule:
    only the generated tokens count, so a word completed across the prompt is not banned)."""
    banned = []
    for seq in sequences:
        n = len(seq) - 1
        if n > len(output):
            continue
        if n == 0 or output[-n:] == seq[:-1]:
            banned.append(seq[-1])
    return banned


def _logprob_tensors(raw_lp: torch.Tensor, tokens: torch.Tensor, rows: list[int], k: int,
                     chosen_ids: list[list[int] | None] | None = None) -> LogprobTensors:
    """The chosen tokens' logprobs and ranks, and the top ``k``, for ``rows`` of ``raw_lp`` [S, V].

    A row whose ``chosen_ids`` entry is a list (``logprob_token_ids``, then ``k`` is at least
    its length) reports those ids, in their order, in place of its top-k."""
    idx = to_device(rows, raw_lp.device)
    sel = raw_lp[idx]
    chosen = tokens[idx]
    chosen_lp = sel.gather(1, chosen.unsqueeze(1)).squeeze(1)
    ranks = _rank(sel, chosen_lp)
    if k == 0:
        return chosen_lp, ranks, None, None, None
    top_v, top_i = sel.topk(k, dim=-1)
    top_r = None
    if any(chosen_ids or []):
        # Ranks of a real top-k are its positions; requested ids get their true ranks.
        top_r = torch.arange(1, k + 1, device=sel.device).expand(len(rows), k).clone()
    for j, ids in enumerate(chosen_ids or []):
        if ids:
            assert top_r is not None
            t = to_device(ids, top_i.device, top_i.dtype)
            top_i[j, : len(ids)] = t
            top_v[j, : len(ids)] = sel[j, t]
            top_r[j, : len(ids)] = _rank(sel[j].unsqueeze(0), sel[j, t])
    return chosen_lp, ranks, top_v, top_i, top_r


def prompt_logprobs(
    logits: torch.Tensor, next_ids: torch.Tensor, k: int
) -> tuple[list[float], list[int], list[list[int]], list[list[float]]]:
    """logits [q, V] at positions whose next token is ``next_ids`` [q]."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, next_ids.unsqueeze(1)).squeeze(1)
    ranks = _rank(lp, chosen)
    if k > 0:
        tv, ti = lp.topk(k, dim=-1)
        return chosen.tolist(), ranks.tolist(), ti.tolist(), tv.tolist()
    q = logits.shape[0]
    return chosen.tolist(), ranks.tolist(), [[] for _ in range(q)], [[] for _ in range(q)]
