"""Beam search on top of the engine, ranked exactly as Hugging Face ``generate(num_beams=k)``.

How it runs (vLLM's approach): the search lives in the front end. Each step submits one
ordinary request per live beam -- its prompt is the original prompt plus the beam's tokens,
``max_tokens=1``, greedy, ``logprobs=K`` (raw log-probabilities) -- and automatic prefix
caching lets every such request reuse the K/V blocks already computed for the prompt and
for the beam's earlier tokens, so a step recomputes at most one partial block per beam.
:class:`BeamSearchInstance` is the pure state machine (no engine, no I/O); ``LLM.beam_search``
drives it synchronously and :class:`BeamSearchStream` drives it inside the API server.

The selection follows transformers 5.x ``GenerationMixin._beam_search`` step for step:

* ``K = max(2, 1 + number of EOS ids) * beam_width`` candidates are kept per step: the best
  ``K`` of (beam, token) pairs by cumulative logprob. ``K`` per beam is enough, since a pair
  in the global top ``K`` is in its own beam's top ``K``.
* A candidate *hits* when its token is an EOS id (unless ``ignore_eos``) or it reaches
  ``max_tokens``. The next live beams are the best ``beam_width`` candidates that did not hit.
* Only hits among the first ``beam_width`` candidates become finished hypotheses (an EOS
  further down the list is dropped), scored ``cum_logprob / gen_len ** length_penalty``
  with ``gen_len`` counting the EOS token; the best ``beam_width`` hypotheses are kept.
* The search stops when every candidate hits (``max_tokens``), when ``early_stopping=True``
  and ``beam_width`` hypotheses are finished, or when ``beam_width`` hypotheses are finished
  and the best live beam can no longer beat the worst of them: its score is estimated at
  the current length (``early_stopping=False``, HF's default) or, for
  ``early_stopping="never"`` with a positive length penalty, at ``max_tokens``.

vLLM's own loop differs (it ranks live beams with the length penalty, counts the prompt
in the length and keeps every EOS candidate); we follow HF because HF is the reference.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pagoda.errors import ValidationError
from pagoda.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from pagoda.sampling_params import BeamSearchParams, SamplingParams


@dataclass
class BeamSearchSequence:
    """One returned beam (vLLM's fields, plus ``score``)."""

    tokens: list[int]  # the prompt followed by the generated tokens (a final EOS included), as in vLLM
    logprobs: list[dict[int, Logprob]]  # one dict per generated token: the chosen one, then the step's top by rank
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None  # "stop" (EOS) or "length"
    stop_reason: int | str | None = None  # the EOS id that ended it
    score: float | None = None  # pagoda: the ranking score, HF's ``sequences_scores``


@dataclass
class BeamSearchOutput:
    """The ``beam_width`` best sequences of one prompt, best first."""

    sequences: list[BeamSearchSequence]


def beam_search_score(cum_logprob: float, gen_len: int, length_penalty: float) -> float:
    """HF's hypothesis score; ``gen_len`` counts generated tokens, a final EOS included."""
    return cum_logprob / (gen_len**length_penalty)


def candidates_per_step(beam_width: int, num_eos: int) -> int:
    """HF's ``beams_to_keep``: enough candidates that ``beam_width`` survive even if EOS ends many."""
    return max(2, 1 + num_eos) * beam_width


def step_sampling_params(num_logprobs: int, prompt_logprobs: int | None = None) -> SamplingParams:
    """The one-token request each live beam submits per step (the first step may also ask for the
    prompt's logprobs: its prompt is the original one)."""
    return SamplingParams(temperature=0.0, max_tokens=1, logprobs=num_logprobs, ignore_eos=True,
                          prompt_logprobs=prompt_logprobs)  # detokenized: the logprobs carry decoded_token (vLLM)


def chosen_first(token: int, d: dict[int, Logprob], num: int | None = None) -> dict[int, Logprob]:
    """A step's candidates as a sampled token's logprobs are: the chosen ``token`` first, then the others by
    rank; with ``num``, only those among the ``num`` best (the sampled path's ``logprobs=num``: the chosen
    token and the top ``num``, the chosen one not twice)."""
    ranked = sorted(d.items(), key=lambda kv: -kv[1].logprob)  # stable: ties keep the engine's order
    if num is not None:
        ranked = ranked[:num]
    return {token: d[token], **{t: v for t, v in ranked if t != token}}


@dataclass
class _Beam:
    tokens: list[int]  # generated only
    logprobs: list[dict[int, Logprob]]
    cum: float


class BeamSearchInstance:
    """The beam search of one prompt: ``pending()`` beams to extend, ``advance()`` with their logprobs."""

    def __init__(self, prompt_token_ids: list[int], params: BeamSearchParams, eos_token_ids: Sequence[int],
                 prompt: str | None = None, cache_salt: str | None = None) -> None:
        self.prompt = prompt
        # Every per-step request carries the salt, so the search reuses only its tenant's cache.
        self.cache_salt = cache_salt
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.eos = set() if params.ignore_eos else {int(t) for t in eos_token_ids}
        self.k = candidates_per_step(params.beam_width, len(self.eos))
        self.beams: list[_Beam] = [_Beam([], [], 0.0)]
        self.finished: list[tuple[float, _Beam]] = []  # (score, beam), best first, at most beam_width
        self.num_generated = 0
        self.done = False
        # the prompt's logprobs (as a sampled request's ``prompt_logprobs``), when the driver asked the first step
        # for them (the server's ``echo`` with ``logprobs``)
        self.prompt_logprobs: list[dict[int, Logprob] | None] | None = None

    def pending(self) -> list[list[int]]:
        """The full token sequence of every live beam (empty once done)."""
        if self.done:
            return []
        return [self.prompt_token_ids + b.tokens for b in self.beams]

    def pending_prompts(self) -> list[dict[str, Any]]:
        """:meth:`pending` as engine prompts (token ids, and the cache salt when there is one)."""
        extra = {"cache_salt": self.cache_salt} if self.cache_salt is not None else {}
        return [{"prompt_token_ids": toks, **extra} for toks in self.pending()]

    def advance(self, step_logprobs: list[dict[int, Logprob]]) -> None:
        """One step: ``step_logprobs[i]`` holds live beam ``i``'s top-``k`` next-token logprobs."""
        if self.done:
            raise RuntimeError("advance() on a finished beam search")
        if len(step_logprobs) != len(self.beams):
            raise ValueError(f"got logprobs for {len(step_logprobs)} beams, {len(self.beams)} are live")
        p = self.params
        width, lp = p.beam_width, p.length_penalty
        cands: list[tuple[float, int, int, dict[int, Logprob]]] = []
        for i, (beam, d) in enumerate(zip(self.beams, step_logprobs, strict=True)):
            top = sorted(d.items(), key=lambda kv: (-kv[1].logprob, kv[0]))[: self.k]
            cands.extend((beam.cum + v.logprob, i, t, d) for t, v in top)
        # HF: torch.topk over the flattened (beam, token) scores; ties go to the lower beam, then token.
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        cands = cands[: self.k]
        gen_len = self.num_generated + 1
        at_max = gen_len >= p.max_tokens

        def extend(c: tuple[float, int, int, dict[int, Logprob]]) -> _Beam:
            parent = self.beams[c[1]]
            return _Beam(parent.tokens + [c[2]], parent.logprobs + [chosen_first(c[2], c[3])], c[0])

        hits = [at_max or c[2] in self.eos for c in cands]
        full = len(self.finished) == width
        if not (p.early_stopping is True and full):
            # only the best `width` candidates may finish here (HF's beam_indices < num_beams)
            best = zip(cands[:width], hits[:width], strict=True)
            new = [(beam_search_score(c[0], gen_len, lp), extend(c)) for c, h in best if h]
            if new:  # stable merge: on equal scores the older hypothesis ranks first (as HF's topk over the cat)
                self.finished = sorted(self.finished + new, key=lambda sb: -sb[0])[:width]
        self.beams = [extend(c) for c, h in zip(cands, hits, strict=True) if not h][:width]
        self.num_generated = gen_len

        full = len(self.finished) == width
        improvable = True
        if full:
            if not self.beams:
                improvable = False
            else:
                hyp_len = p.max_tokens if (p.early_stopping == "never" and lp > 0.0) else gen_len
                best_running = self.beams[0].cum / (hyp_len**lp)
                improvable = best_running > self.finished[-1][0]
        self.done = all(hits) or not self.beams or not improvable or (p.early_stopping is True and full)

    def sequences(self, decode: Callable[[list[int]], str] | None = None) -> list[BeamSearchSequence]:
        """The ``beam_width`` best hypotheses, best first (live beams fill in if too few finished)."""
        p = self.params
        ranked = list(self.finished)
        if len(ranked) < p.beam_width:  # only when the vocabulary is smaller than the candidates needed
            extra = [(beam_search_score(b.cum, max(1, len(b.tokens)), p.length_penalty), b) for b in self.beams]
            ranked = sorted(ranked + extra, key=lambda sb: -sb[0])[: p.beam_width]
        out = []
        for score, b in ranked:
            ended_on_eos = bool(b.tokens) and b.tokens[-1] in self.eos
            seq = BeamSearchSequence(
                tokens=self.prompt_token_ids + b.tokens, logprobs=list(b.logprobs), cum_logprob=b.cum,
                finish_reason="stop" if ended_on_eos else "length",
                stop_reason=b.tokens[-1] if ended_on_eos else None, score=score,
            )
            if decode is not None:
                seq.text = decode(seq.tokens)
            out.append(seq)
        return out

    def request_output(self, request_id: str, tokenizer: Any, skip_special_tokens: bool = True,
                       arrival_time: float | None = None, num_logprobs: int | None = None) -> RequestOutput:
        """The server's view: choices hold generated tokens only; a final EOS is left out of the text
        (and out of ``token_ids`` unless ``include_stop_str_in_output``), as vLLM's server does.
        ``num_logprobs`` (the client's ``logprobs``) cuts each token's logprobs to what a sampled request
        with that many would carry: the chosen token, then the top ``num_logprobs`` by rank."""
        outs = []
        for i, s in enumerate(self.sequences()):
            gen = s.tokens[len(self.prompt_token_ids):]
            lps = s.logprobs
            if num_logprobs is not None:
                lps = [chosen_first(t, d, num_logprobs) for t, d in zip(gen, lps, strict=True)]
            shown = gen
            if s.finish_reason == "stop":
                shown = gen[:-1]
                if not self.params.include_stop_str_in_output:
                    gen, lps = gen[:-1], lps[:-1]
            text = tokenizer.decode(shown, skip_special_tokens=skip_special_tokens)
            outs.append(CompletionOutput(index=i, text=text, token_ids=gen, cumulative_logprob=s.cum_logprob,
                                         logprobs=lps, finish_reason=s.finish_reason, stop_reason=s.stop_reason))
        now = time.time()
        return RequestOutput(
            request_id=request_id, prompt=self.prompt, prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=self.prompt_logprobs,
            outputs=outs, finished=True,
            metrics=RequestMetrics(arrival_time=arrival_time or now, finished_time=now),
        )


def check_concurrency_limit(concurrency_limit: int | None) -> int | None:
    """``concurrency_limit`` as given, when it is None (every prompt at once) or an integer of at least 1."""
    if concurrency_limit is not None and (
            isinstance(concurrency_limit, bool) or not isinstance(concurrency_limit, int) or concurrency_limit < 1):
        raise ValidationError(f"concurrency_limit must be an integer of at least 1 (or None: every prompt at once), "
                              f"got {concurrency_limit!r}.", "concurrency_limit")
    return concurrency_limit


def run_beam_search(instances: list[BeamSearchInstance],
                    step: Callable[[list[dict[str, Any]], int], list[dict[int, Logprob]]],
                    concurrency_limit: int | None = None) -> None:
    """Drive ``instances`` to the end; ``step(prompts, k)`` runs one engine step for every prompt
    (see :meth:`BeamSearchInstance.pending_prompts`) and returns each one's top-``k`` next-token
    logprobs. ``concurrency_limit`` prompts at a time (None: all of them; else an integer of at least 1)."""
    limit = check_concurrency_limit(concurrency_limit) or len(instances)
    for start in range(0, len(instances), limit):
        group = instances[start:start + limit]
        while True:
            live = [inst for inst in group if not inst.done]
            if not live:
                break
            batch: list[dict[str, Any]] = []
            spans = []
            for inst in live:
                seqs = inst.pending_prompts()
                spans.append((len(batch), len(batch) + len(seqs)))
                batch.extend(seqs)
            k = max(inst.k for inst in live)
            lps = step(batch, k)
            for inst, (a, b) in zip(live, spans, strict=True):
                inst.advance(lps[a:b])


class BeamSearchStream:
    """A beam-search request inside the API server, shaped like :class:`RequestStream` for the
    serving code: iterating it runs the search and yields one final ``RequestOutput``
    (``last_deltas`` then holds each choice's whole text); ``close()`` aborts the step in flight.
    ``logprobs`` is the client's count (each token's logprobs are cut to it); ``prompt_logprobs`` asks the
    first step (whose prompt is the original one) for the prompt's logprobs, computed as for a sampled request.
    """

    def __init__(self, engine: Any, request_id: str, instance: BeamSearchInstance,
                 skip_special_tokens: bool = True, logprobs: int | None = None,
                 prompt_logprobs: int | None = None) -> None:
        self.engine = engine
        self.request_id = request_id
        self.instance = instance
        self.skip_special_tokens = skip_special_tokens
        self.logprobs = logprobs
        self.prompt_logprobs = prompt_logprobs
        self.num_logprobs = max(instance.k, logprobs or 0)  # a client's top_logprobs may ask for more than K
        self.n = instance.params.beam_width
        self.prompt_token_ids = instance.prompt_token_ids
        self.last_deltas = [""] * self.n
        self.finished = False
        self._delivered = False
        self._inflight: list[Any] = []
        self._arrival = time.time()

    def __aiter__(self) -> BeamSearchStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._delivered:
            raise StopAsyncIteration
        self._delivered = True
        try:
            out = await self._run()
        finally:
            self.close()
        self.last_deltas = [c.text for c in out.outputs]
        return out

    async def _run(self) -> RequestOutput:
        from pagoda.engine.async_llm import final_output  # server-only module (msgspec, zmq)

        inst = self.instance
        step = 0
        while not inst.done:
            streams = []
            sp = step_sampling_params(self.num_logprobs, self.prompt_logprobs if step == 0 else None)
            try:
                for i, prompt in enumerate(inst.pending_prompts()):
                    streams.append(self.engine.add_request(f"{self.request_id}-beam{step}-{i}", prompt, sp))
                self._inflight = streams
                finals = await asyncio.gather(*[final_output(s) for s in streams])
            finally:
                for s in streams:
                    s.close()
                self._inflight = []
            lps = []
            for f in finals:
                if f.error:
                    raise RuntimeError(f.error)
                c = f.outputs[0]
                if not c.logprobs:
                    raise RuntimeError(f"beam search step returned no logprobs ({c.finish_reason})")
                lps.append(c.logprobs[0])
            if step == 0 and self.prompt_logprobs is not None:
                inst.prompt_logprobs = finals[0].prompt_logprobs
            inst.advance(lps)
            step += 1
        return inst.request_output(self.request_id, self.engine.get_tokenizer(), self.skip_special_tokens,
                                   self._arrival, self.logprobs)

    def close(self) -> None:
        self.finished = True
        for s in self._inflight:
            s.close()
        self._inflight = []
