"""Seeded synthetic workloads for the benchmarks.

* ``random``: prompt and output lengths drawn uniformly from ranges.
* ``sharegpt``: lengths drawn to follow ShareGPT's shape (long-tailed, mean about 202
  prompt and 179 output tokens) from log-normal distributions fitted to those means,
  clipped to [4, 1024] prompt and [4, 512] output tokens.
* ``prefix_repetition`` (vLLM's dataset of that name): ``num_prefixes`` shared prefixes
  (think system prompts) of ``prefix_len`` tokens; request ``i`` is prefix
  ``i % num_prefixes`` followed by its own ``suffix_len`` random tokens; the order is
  shuffled with the seed. The prefix-cache workload.

Prompts are random token ids (valid for any tokenizer of the vocab size), so the
workload is identical for every engine that takes token ids.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int
    prefix_id: int | None = None  # prefix_repetition: which shared prefix the prompt starts with


def random_requests(
    num: int, input_len: tuple[int, int], output_len: tuple[int, int], vocab_size: int, seed: int = 0
) -> list[BenchRequest]:
    rng = random.Random(seed)
    lo = min(1000, vocab_size - 1)
    out = []
    for _ in range(num):
        n_in = rng.randint(*input_len)
        n_out = rng.randint(*output_len)
        out.append(BenchRequest([rng.randint(10, lo) for _ in range(n_in)], n_out))
    return out


def _lognormal(rng: random.Random, mean: float, sigma: float) -> float:
    mu = math.log(mean) - sigma * sigma / 2
    return rng.lognormvariate(mu, sigma)


def sharegpt_like_requests(num: int, vocab_size: int, seed: int = 0) -> list[BenchRequest]:
    rng = random.Random(seed)
    lo = min(1000, vocab_size - 1)
    out = []
    for _ in range(num):
        n_in = int(min(1024, max(4, _lognormal(rng, 202.0, 1.0))))
        n_out = int(min(512, max(4, _lognormal(rng, 179.0, 0.9))))
        out.append(BenchRequest([rng.randint(10, lo) for _ in range(n_in)], n_out))
    return out


def prefix_repetition_requests(num: int, prefix_len: int, suffix_len: int, num_prefixes: int, output_len: int,
                               vocab_size: int, seed: int = 0) -> list[BenchRequest]:
    """``num`` requests sharing ``num_prefixes`` prefixes (see the module docstring).

    ``BenchRequest.prefix_id`` names the prefix, so a benchmark can tell a request whose
    prefix is seen for the first time from one that repeats it.
    """
    if num_prefixes < 1:
        raise ValueError(f"the number of prefixes must be at least 1, got {num_prefixes}.")
    if prefix_len < 0 or suffix_len < 0 or prefix_len + suffix_len < 1 or output_len < 1:
        raise ValueError("prefix_repetition needs prefix_len + suffix_len >= 1 and output_len >= 1.")
    rng = random.Random(seed)
    lo = min(1000, vocab_size - 1)
    prefixes = [[rng.randint(10, lo) for _ in range(prefix_len)] for _ in range(num_prefixes)]
    out = []
    for i in range(num):
        suffix = [rng.randint(10, lo) for _ in range(suffix_len)]
        out.append(BenchRequest(prefixes[i % num_prefixes] + suffix, output_len, prefix_id=i % num_prefixes))
    rng.shuffle(out)
    return out
