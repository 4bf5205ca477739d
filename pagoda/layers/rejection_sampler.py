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
first rejection hold -1 (not emitted).
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
    d_list = [t for d, n in zip(drafts, num_rows, strict=True) for t in (*d, -1) if n == len(d) + 1]
    if len(d_list) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows for drafts of {[len(d) for d in drafts]} tokens")
    d = torch.tensor(d_list, dtype=torch.long, device=device)
    accept, recovered = _verify_rows(logits, row_reqs, reqs, num_rows, d)
    tokens = _emit(accept, recovered, d, num_rows)
    if raw_lp is None:
        return DeviceSample(tokens, [], [])
    rows = [i for i, w in enumerate(want_lp) if w]
    params = [row_reqs[i].sampling_params for i in rows]
    ks = [p.logprobs or 0 for p in params]
    chosen = [p.logprob_token_ids for p in params]
    return DeviceSample(tokens, rows, ks, _logprob_tensors(raw_lp, tokens.clamp(min=0), rows, max(ks), chosen))


def _verify_rows(logits: torch.Tensor, row_reqs: list[Request], reqs: list[Request], num_rows: list[int],
                 d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: whether its draft token is accepted (bonus rows: False), and the token emitted
    when it is the first row not accepted."""
    greedy = torch.tensor([r.sampling_params.sampling_type_greedy for r in row_reqs], device=logits.device)
    target = logits.argmax(dim=-1)
    if bool(greedy.all()):
        return (target == d) & (d >= 0), target
    probs = sampling_probs(logits, [r.sampling_params for r in row_reqs])
    u, noise = _draws(probs, reqs, num_rows)
    safe_d = d.clamp(min=0)
    p_d = probs.gather(1, safe_d.unsqueeze(1)).squeeze(1)
    accept = (u < p_d) & (d >= 0)
    residual = probs.scatter(1, safe_d.unsqueeze(1), 0.0)
    residual = torch.where((d >= 0).unsqueeze(1), residual, probs)
    sampled = (residual / noise).argmax(dim=-1)
    return torch.where(greedy, (target == d) & (d >= 0), accept), torch.where(greedy, target, sampled)


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


def _emit(accept: torch.Tensor, recovered: torch.Tensor, d: torch.Tensor, num_rows: list[int]) -> torch.Tensor:
    """Tokens per row: accepted drafts up to the first row not accepted, which gives ``recovered``;
    -1 after it."""
    device = accept.device
    R, N, M = accept.shape[0], len(num_rows), max(num_rows)
    starts = torch.tensor([0, *num_rows[:-1]], device=device).cumsum(0)
    col = torch.arange(M, device=device)
    valid = col.unsqueeze(0) < torch.tensor(num_rows, device=device).unsqueeze(1)  # [N, M]
    idx = torch.where(valid, starts.unsqueeze(1) + col.unsqueeze(0), torch.zeros((), dtype=torch.long, device=device))
    acc = accept[idx] & valid
    all_before = torch.cat([torch.ones(N, 1, dtype=torch.bool, device=device),
                            acc[:, :-1].to(torch.int8).cumprod(1).bool()], dim=1)
    emitted = all_before & valid
    per_row = torch.where(accept, d, recovered)
    out = torch.full((R,), -1, dtype=torch.long, device=device)
    flat = idx[emitted]
    out[flat] = per_row[flat]
    return out
