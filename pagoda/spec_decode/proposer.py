"""Which requests speculate, how far, and the proposer that fills ``Request.spec_token_ids``.

A request speculates when it is decoding (every known token but the last computed) and its
sampling reads nothing that changes from one position to the next on the host: requests with
repetition / presence / frequency penalties, bad_words, or min_tokens not yet reached decode one
token per step (their output is the same; they only do not speed up). The number of proposed
tokens is capped so that the tokens verified never pass ``max_tokens`` (the bonus token counts)
or the context length, which also keeps every verify within the blocks admission allowed for.

Constrained requests (structured outputs) speculate once their grammar applies (a reasoning request after
its end tag): a proposal is cut before its first token the grammar refuses (that token and every one after it
would be rejected anyway; :meth:`RequestGrammar.valid_prefix`), and the step's bitmask has a row for each
verified position, filled by walking the matcher through the drafts
(:meth:`~pagoda.structured_output.manager.RequestGrammar.fill_bitmask`), so every emitted token is the one the
constrained sampler would give without speculation. A terminated grammar (only a stop token is left) proposes
nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pagoda.core.request import Request, RequestStatus
from pagoda.spec_decode.config import SpeculativeConfig
from pagoda.spec_decode.ngram import NgramProposer
from pagoda.spec_decode.suffix import SuffixCorpus, SuffixProposer


class Proposer(Protocol):
    def propose(self, reqs: list[Request], ks: list[int]) -> list[list[int]]:
        """Up to ``ks[i]`` proposed tokens continuing ``reqs[i]``'s known tokens."""
        ...


class Lookup(Protocol):
    def propose_one(self, tokens: list[int] | np.ndarray, k: int, shared: bool = True) -> list[int]:
        """Up to ``k`` tokens continuing ``tokens`` (``shared``: other requests' text may be drawn on too, where the
        lookup keeps any)."""
        ...


class LookupBatchProposer:
    """A model-free proposer over each request's own tokens (n-gram prompt lookup or suffix decoding); for a
    constrained request the text its grammar forces next comes first (a strict JSON schema's keys and
    punctuation: :meth:`RequestGrammar.forced_tokens`), then the lookup continues after it."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self._arrays: dict[str, tuple[Request, np.ndarray, int]] = {}

    def propose(self, reqs: list[Request], ks: list[int]) -> list[list[int]]:
        out = []
        for r, k in zip(reqs, ks, strict=True):
            toks = self._tokens(r)
            forced = r.grammar.forced_tokens(k) if r.grammar is not None else []
            if forced:
                toks = np.concatenate([toks, np.asarray(forced, dtype=np.int64)])
            out.append(forced + self.lookup.propose_one(toks, k - len(forced), shares_text(r)))
        return out

    def _tokens(self, r: Request) -> np.ndarray:
        """``r.all_token_ids`` as an int64 array, kept from step to step and extended by the new tokens only (the
        list only grows): converting a 128k-token list every step cost ~2 ms a request."""
        toks = r.all_token_ids
        L = len(toks)
        entry = self._arrays.get(r.request_id)
        if entry is None or entry[0] is not r or entry[2] > L:
            buf, n = np.empty(max(64, 2 * L), dtype=np.int64), 0
        else:
            _, buf, n = entry
            if L > len(buf):
                grown = np.empty(2 * L, dtype=np.int64)
                grown[:n] = buf[:n]
                buf = grown
        if L > n:
            buf[n:L] = toks[n:L]
        self._arrays[r.request_id] = (r, buf, L)
        return buf[:L]

    def retain(self, running_ids: set[str]) -> None:
        """Forget the arrays of requests that no longer run (a preempted one rebuilds its array when it returns)."""
        for rid in [rid for rid in self._arrays if rid not in running_ids]:
            del self._arrays[rid]


def shares_text(r: Request) -> bool:
    """Whether ``r`` may draft from other requests' outputs (and its own output may serve theirs): not with a
    ``cache_salt`` (its tenant's text stays its own, as its prefix-cache blocks do: acceptance rates and timings would
    tell one tenant about another's outputs), and not for a seeded sampled request, whose tokens must follow from its
    seed and its own text alone (the rejection sampler's draws depend on the drafts; greedy tokens do not)."""
    p = r.sampling_params
    return r.cache_salt is None and (p.seed is None or p.sampling_type_greedy)


class SuffixBatchProposer(LookupBatchProposer):
    """Suffix decoding: :class:`LookupBatchProposer` over :class:`SuffixProposer`, whose corpus takes the output of
    every request that ran, speculating or not (:meth:`track`, each step), once it has finished without an error
    (found at :meth:`retain`); requests that do not :func:`shares_text` neither draw on the corpus nor feed it."""

    def __init__(self, cfg: SpeculativeConfig) -> None:
        self.corpus = SuffixCorpus(cfg.suffix_max_cached_requests)
        super().__init__(SuffixProposer(cfg.suffix_max_depth, cfg.suffix_max_spec_factor, cfg.suffix_min_token_prob,
                                        self.corpus if cfg.suffix_max_cached_requests > 0 else None))
        self._seen: dict[str, Request] = {}

    def track(self, running: list[Request]) -> None:
        """The step's running requests: each is kept in view until it finishes."""
        if self.corpus.max_requests > 0:
            for r in running:
                self._seen[r.request_id] = r

    def retain(self, running_ids: set[str]) -> None:
        """Requests seen before that no longer run: a finished one's output joins the corpus (a preempted one is
        kept in view until it runs again or finishes)."""
        super().retain(running_ids)
        for rid in [rid for rid in self._seen if rid not in running_ids]:
            r = self._seen[rid]
            if r.status.finished:
                if r.status != RequestStatus.FINISHED_ERROR and shares_text(r):
                    self.corpus.add(list(r.output_token_ids))
                del self._seen[rid]


class SyntheticProposer:
    """Timing only (``method: synthetic``): proposes ``k`` copies of the last token, so each verify
    step has the shape of a k-token draft. Outputs stay exact (verification is real); acceptance is
    whatever the model gives. For measuring verify-step cost, never for speed."""

    def propose(self, reqs: list[Request], ks: list[int]) -> list[list[int]]:
        return [[r.all_token_ids[-1]] * k for r, k in zip(reqs, ks, strict=True)]


def can_speculate(r: Request) -> bool:
    p = r.sampling_params
    return (
        r.status == RequestStatus.RUNNING and r.num_output_tokens > 0
        and r.num_computed_tokens == r.num_tokens - 1
        and p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty
        and not p.bad_words_token_ids and r.num_output_tokens >= (p.min_tokens or 0)
        and (r.grammar is None or r.grammar.reasoning_ended)  # while reasoning the end tag may not be drafted
    )


class SpecDecoder:
    """Runs the proposer for the running requests after each step's update."""

    def __init__(self, cfg: SpeculativeConfig, max_model_len: int, proposer: Proposer) -> None:
        self.cfg = cfg
        self.max_model_len = max_model_len
        self.proposer = proposer

    def max_draft(self, r: Request) -> int:
        """Tokens ``r`` may have proposed now (0: none)."""
        if not can_speculate(r):
            return 0
        return max(0, min(self.cfg.num_speculative_tokens, r.max_tokens - r.num_output_tokens - 1,
                          self.max_model_len - r.num_tokens))

    def release(self, running: list[Request]) -> None:
        """A stateful proposer (draft model, EAGLE head, suffix corpus) lets go of requests no longer running: after
        each step's update, and as soon as the front end stops or aborts a request (between steps, so an idle
        engine holds no draft KV of finished requests)."""
        retain = getattr(self.proposer, "retain", None)
        if retain is not None:
            retain({r.request_id for r in running})

    def propose(self, running: list[Request], spec_hidden: Any = None) -> None:
        """Set ``spec_token_ids`` of every running request (empty for those that do not speculate).
        ``spec_hidden``: the completed step's target hidden states (EAGLE heads read them)."""
        dbs = self.cfg.disable_by_batch_size
        reqs, ks = [], []
        for r in running:
            r.spec_token_ids = []
            k = 0 if dbs is not None and len(running) > dbs else self.max_draft(r)
            if k > 0:
                reqs.append(r)
                ks.append(k)
        track = getattr(self.proposer, "track", None)
        if track is not None:  # suffix decoding: every running request's output may join its corpus
            track(running)
        self.release(running)
        observe = getattr(self.proposer, "observe", None)
        if observe is not None:  # EAGLE: the head catches up on the step's kept positions
            observe(spec_hidden, {r.request_id: r for r in running})
        if not reqs:
            return
        for r, k, toks in zip(reqs, ks, self.proposer.propose(reqs, ks), strict=True):
            draft = list(toks[:k])
            if r.grammar is not None and draft:
                del draft[r.grammar.valid_prefix(draft):]
            r.spec_token_ids = draft


def make_spec_decoder(cfg: SpeculativeConfig, engine_cfg, runner: Any = None) -> SpecDecoder:
    """The proposer the config names (a draft model or an EAGLE head loads here; a head needs the target's
    ``runner``)."""
    proposer: Proposer
    if cfg.method == "ngram":
        proposer = LookupBatchProposer(NgramProposer(cfg.prompt_lookup_min, cfg.prompt_lookup_max))
    elif cfg.method == "suffix":
        proposer = SuffixBatchProposer(cfg)
    elif cfg.method == "synthetic":
        proposer = SyntheticProposer()
    elif cfg.method == "draft_model":
        from pagoda.spec_decode.draft_model import DraftModelProposer

        proposer = DraftModelProposer(cfg, engine_cfg)
    elif cfg.method in ("eagle", "eagle3"):
        from pagoda.spec_decode.eagle import EagleProposer

        proposer = EagleProposer(cfg, engine_cfg, runner)
    else:  # SpeculativeConfig.from_dict refuses the others
        raise ValueError(f"speculative_config.method: method {cfg.method} not supported yet")
    return SpecDecoder(cfg, engine_cfg.max_model_len, proposer)


def check_draft_vocab(spec: SpecDecoder, target_vocab: int) -> None:
    """A draft model must share the target's vocabulary (start-up error naming the key)."""
    vocab = getattr(spec.proposer, "vocab_size", None)
    if vocab is not None and vocab != target_vocab:
        raise ValueError(f"speculative_config.model: the draft model's vocabulary ({vocab} tokens) differs from the "
                         f"target's ({target_vocab}); a draft model must share the target's tokenizer.")
