"""The makespan bound of an offline run (``pagoda bench throughput --makespan-bound``).

No schedule can finish a request list faster than the larger of two times:

* ``tail`` = the longest request's output tokens x the batch-1 decode step time: its tokens come one
  step after another, and no step is faster than a step of one request;
* ``work`` = prompt tokens / full-batch prefill rate + output tokens / full-batch decode rate: every
  token has to be computed, and none faster than at the engine's best batch.

``bound = max(tail, work)`` and ``ratio = measured seconds / bound`` (1.0 would be a perfect schedule).

The three speeds are measured on the same engine, in the same process, just before the timed run,
on fresh random prompts (none of the workload's tokens, so its prefix-cache hits are unchanged), each
``step()`` timed as ``pagoda bench latency`` times it:

* batch-1 decode step: the median pure decode step of one request whose prompt is as long as the
  longest request's (by output tokens), over ``--makespan-decode-steps`` tokens;
* full-batch decode rate: ``B / median step`` of ``B`` requests decoding together, ``B`` = the most
  requests the run can hold at once (``--max-num-seqs``, the request count, and the KV cache at that
  context), each starting at the workload's mean decode context (the output-token-weighted mean of
  ``prompt + output / 2``, less half the measured steps) so attention reads as much KV as in the run;
* full-batch prefill rate: prompt tokens per second of a prefill-only run (one output token each) of
  prompts with the workload's first lengths, enough for about four full token budgets.

Every prompt token counts as work (a prefix-cache hit is not subtracted: with shared prefixes the
bound is loose). Preemptions, chunk boundaries, the host's own work and output processing count against
the measured time, never the bound.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from pagoda.benchmarks.datasets import BenchRequest
from pagoda.benchmarks.latency import timed_steps


@dataclass
class MakespanBound:
    seconds: float
    tail_s: float
    work_s: float
    longest_output_tokens: int
    batch1_step_ms: float
    full_batch: int
    full_batch_context: int
    full_batch_step_ms: float
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    prompt_tokens: int
    output_tokens: int
    calibration_s: float

    def record(self, measured_s: float) -> dict[str, Any]:
        """The JSON entry: the parts, the bound and the measured / bound ratio."""
        return {**asdict(self), "measured_s": measured_s, "ratio": measured_s / self.seconds,
                "definition": "bound = max(longest request's output tokens x batch-1 decode step, prompt tokens / "
                              "full-batch prefill rate + output tokens / full-batch decode rate); ratio = measured / "
                              "bound (pagoda/benchmarks/makespan.py)"}

    def describe(self, measured_s: float) -> str:
        return (f"[makespan] bound {self.seconds:.2f} s = max(tail {self.tail_s:.2f} s = "
                f"{self.longest_output_tokens} tok x {self.batch1_step_ms:.2f} ms at batch 1, work {self.work_s:.2f} s "
                f"= {self.prompt_tokens} prompt tok / {self.prefill_tokens_per_s:.0f} tok/s + {self.output_tokens} "
                f"output tok / "
                f"{self.decode_tokens_per_s:.0f} tok/s at batch {self.full_batch}); measured {measured_s:.2f} s = "
                f"{measured_s / self.seconds:.2f}x the bound")


class _Fresh:
    """Random prompts that share no tokens' order with the workload's (a seed of their own)."""

    def __init__(self, vocab: int, seed: int) -> None:
        self.rng = random.Random(seed * 7919 + 104729)
        self.hi = min(1000, vocab - 1)

    def prompt(self, n: int) -> list[int]:
        return [self.rng.randint(10, self.hi) for _ in range(max(1, n))]


def decode_context(reqs: list[BenchRequest]) -> float:
    """The output-token-weighted mean context of the workload's decode steps: sum o (p + o / 2) / sum o."""
    out = sum(r.output_len for r in reqs)
    return sum(r.output_len * (len(r.prompt_token_ids) + r.output_len / 2) for r in reqs) / max(1, out)


def _full_batch(engine, n_reqs: int, context: int) -> int:
    """Requests that fit at once: max_num_seqs, the request count and the KV cache at ``context`` tokens."""
    cfg = engine.cfg
    per_req = -(-(context + 1) // cfg.block_size)
    fit = engine.core.kv.usable_blocks // max(1, per_req)
    return max(1, min(cfg.max_num_seqs, n_reqs, fit))


def _median_step(engine, prompts: list[list[int]], steps: int, tag: str) -> float:
    _, _, times = timed_steps(engine, prompts, steps + 1, tag)
    if not times:
        raise RuntimeError(f"makespan bound: no pure decode step of {len(prompts)} requests was timed")
    return statistics.median(times)


def _prefill_rate(engine, reqs: list[BenchRequest], fresh: _Fresh) -> float:
    budget = 4 * engine.cfg.max_num_batched_tokens
    prompts: list[list[int]] = []
    for r in reqs:
        prompts.append(fresh.prompt(len(r.prompt_token_ids)))
        if sum(map(len, prompts)) >= budget:
            break
    seconds, _, _ = timed_steps(engine, prompts, 1, "makespan-prefill")
    return sum(map(len, prompts)) / seconds


def measure_bound(engine, reqs: list[BenchRequest], decode_steps: int, seed: int) -> MakespanBound:
    """Measure the three speeds on ``engine`` (an idle ``LLMEngine``) and return the bound of ``reqs``."""
    t0 = time.perf_counter()
    fresh = _Fresh(int(engine.cfg.hf_config["vocab_size"]), seed)
    max_len = engine.cfg.max_model_len
    longest = max(reqs, key=lambda r: r.output_len)
    k1 = max(2, min(decode_steps, longest.output_len))
    p1 = min(len(longest.prompt_token_ids), max_len - k1 - 2)
    b1 = _median_step(engine, [fresh.prompt(p1)], k1, "makespan-b1")
    ctx = int(decode_context(reqs))
    pb = max(1, min(ctx - decode_steps // 2, max_len - decode_steps - 2))
    batch = _full_batch(engine, len(reqs), pb + decode_steps + 1)
    full = _median_step(engine, [fresh.prompt(pb) for _ in range(batch)], decode_steps, "makespan-full")
    prefill_tps = _prefill_rate(engine, reqs, fresh)
    n_in = sum(len(r.prompt_token_ids) for r in reqs)
    n_out = sum(r.output_len for r in reqs)
    decode_tps = batch / full
    tail = longest.output_len * b1
    work = n_in / prefill_tps + n_out / decode_tps
    return MakespanBound(
        seconds=max(tail, work), tail_s=tail, work_s=work, longest_output_tokens=longest.output_len,
        batch1_step_ms=1000 * b1, full_batch=batch, full_batch_context=pb, full_batch_step_ms=1000 * full,
        decode_tokens_per_s=decode_tps, prefill_tokens_per_s=prefill_tps, prompt_tokens=n_in, output_tokens=n_out,
        calibration_s=time.perf_counter() - t0,
    )
