"""Verification of proposed tokens (speculative decoding): greedy matching and rejection sampling.

Rows are the step's sampled logits rows, request after request; a request with ``k`` proposals
``d_0 .. d_{k-1}`` owns ``k + 1`` rows, row ``j`` holding the target's logits for the position
``d_j`` sits at (the last row: the position after the last proposal).

* Processing is per row, as the plain sampler's steps 1-3 (raw logprobs, then allowed_token_ids,
  logit_bias; requests whose processing depends on the position -- penalties, bad_words,
  min_tokens -- never speculate, :mod:`pagoda.spec_decode.proposer`).
* Greedy rows: ``d_j`` is accepted iff it is the row's argmax; the first row that is not accepted
  (or the last row) gives its argmax. The output is exactly the non-speculative greedy output.
* Sampled rows: the proposers' drafts are deterministic (a point mass ``q = δ(d_j)``), so the
  rule of Leviathan et al. becomes: accept ``d_j`` with probability ``p_j(d_j)``; on rejection draw
  from the residual ``max(p_j - q, 0)`` normalised, which is ``p_j`` with ``d_j`` removed; after
  ``k`` acceptances draw the bonus token from ``p_k``. Each emitted token is then distributed
  exactly as ``p`` at its position, the target's distribution.
* Randomness: a seeded request draws, per verify, ``k`` uniforms (one per draft) and then
  ``(k + 1) x V`` exponentials from its own generator (the draws depend only on the request's own
  history), the others from the global generator. A seeded request without drafts in a verify step
  thus draws exactly what a plain step's sampler draws (``V`` exponentials), so its tokens do not depend
  on whether a neighbour speculated.

The result is a :class:`pagoda.layers.sampler.DeviceSample` with one token per row; rows after the
first rejection hold -1 (not emitted). Nothing here waits for the device: host lists reach it by
non-blocking copies and every op has a shape known on the host (a verify step's sampler is launched
right behind its forward, and the host moves on to the token copy). Plain greedy batches skip the
logits processing altogether (:func:`greedy_verify`, from the argmax the verify graph already took).
"""

from __future__ import annotations

import torch

from pagoda.core.request import Request
from pagoda.layers.sampler import (
    DeviceSample,
    _generator,
    _logprob_tensors,
    apply_logits_processing,
    sampling_probs,
    to_device,
)


def rejection_sample(logits: torch.Tensor, reqs: list[Request], num_rows: list[int],
                     drafts: list[list[int]]) -> DeviceSample:
    """``logits`` float32 [R, V] (modified in place); request ``i`` owns ``num_rows[i]`` consecutive
    rows and ``drafts[i]`` (``num_rows[i] - 1`` tokens)."""
    device = logits.device
    row_reqs = [r for r, n in zip(reqs, num_rows, strict=True) for _ in range(n)]
    want_lp = [r.sampling_params.logprobs is not None for r in row_reqs]
    raw_lp = torch.log_softmax(logits, dim=-1) if any(want_lp) else None
    apply_logits_processing(logits, row_reqs)
    d, first = _stage_rows(num_rows, drafts, logits.shape[0], device)
    greedy = [r.sampling_params.sampling_type_greedy for r in row_reqs]
    accept, recovered = _verify_rows(logits, greedy, reqs, num_rows, d)
    tokens = _emit(accept, torch.where(accept, d, recovered), first)
    if raw_lp is None:
        return DeviceSample(tokens, [], [])
    rows = [i for i, w in enumerate(want_lp) if w]
    params = [row_reqs[i].sampling_params for i in rows]
    ks = [p.logprobs or 0 for p in params]
    chosen = [p.logprob_token_ids for p in params]
    return DeviceSample(tokens, rows, ks, _logprob_tensors(raw_lp, tokens.clamp(min=0), rows, max(ks), chosen))


def greedy_verify(target: torch.Tensor, num_rows: list[int], drafts: list[list[int]]) -> DeviceSample:
    """:func:`rejection_sample` for requests that are all plain greedy (nothing processes or reports their
    logits, :func:`pagoda.layers.sampler.plain_greedy`), from the rows' argmax ``target`` [R] alone: each
    row emits its argmax while every draft before it in its request matched."""
    d, first = _stage_rows(num_rows, drafts, target.shape[0], target.device)
    return DeviceSample(_emit(target == d, target, first), [], [])


def _stage_rows(num_rows: list[int], drafts: list[list[int]], num_logits_rows: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, on the device: its draft token (-1 on a request's last, bonus row) and the index of its
    request's first row. One host-to-device copy that does not wait for the device (the forward may
    still be running)."""
    d_list: list[int] = []
    first: list[int] = []
    for dr, n in zip(drafts, num_rows, strict=True):
        if n != len(dr) + 1:
            break
        first += [len(d_list)] * n
        d_list += dr
        d_list.append(-1)
    if len(d_list) != num_logits_rows:
        raise ValueError(f"{num_logits_rows} rows for drafts of {[len(d) for d in drafts]} tokens")
    both = to_device(d_list + first, device, torch.long)
    return both[:num_logits_rows], both[num_logits_rows:]


def _verify_rows(logits: torch.Tensor, greedy: list[bool], reqs: list[Request], num_rows: list[int],
                 d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: whether its draft token is accepted (bonus rows: False), and the token emitted
    when it is the first row not accepted."""
    target = logits.argmax(dim=-1)
    if all(greedy):  # decided on the host: no device synchronisation
        return target == d, target
    probs = sampling_probs(logits, [r.sampling_params for r, n in zip(reqs, num_rows, strict=True) for _ in range(n)])
    u, noise = _draws(probs, reqs, num_rows)
    safe_d = d.clamp(min=0)
    p_d = probs.gather(1, safe_d.unsqueeze(1)).squeeze(1)
    accept = (u < p_d) & (d >= 0)
    residual = probs.scatter(1, safe_d.unsqueeze(1), 0.0)
    residual = torch.where((d >= 0).unsqueeze(1), residual, probs)
    sampled = (residual / noise).argmax(dim=-1)
    g = to_device(greedy, logits.device)
    return torch.where(g, target == d, accept), torch.where(g, target, sampled)


def _draws(probs: torch.Tensor, reqs: list[Request], num_rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniforms [R] and exponentials [R, V]; a seeded request's rows from its own generator."""
    u = torch.rand(probs.shape[0], device=probs.device)
    noise = torch.empty_like(probs).exponential_()
    row = 0
    for r, n in zip(reqs, num_rows, strict=True):
        g = _generator(r, probs.device)
        if g is not None and not r.sampling_params.sampling_type_greedy:
            if n > 1:  # one uniform per draft; the bonus row's is never read
                u[row : row + n - 1] = torch.rand(n - 1, device=probs.device, generator=g)
            noise[row : row + n].exponential_(generator=g)
        row += n
    return u, noise


def _emit(accept: torch.Tensor, per_row: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Tokens per row: ``per_row`` (the accepted draft, or the token emitted at the first row not accepted)
    while no earlier row of the same request was rejected, -1 after. ``first``: each row's request's first
    row. Fixed-shape ops only (no boolean indexing): nothing waits for the device."""
    rejected = (~accept).to(torch.int32)
    before = rejected.cumsum(0) - rejected  # rejections in all earlier rows
    emitted = before == before.index_select(0, first)
    return torch.where(emitted, per_row, torch.full_like(per_row, -1))
