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
workload is identical for every engine that takes token ids. ``workload_from_args`` is the
one builder of ``pagoda bench throughput``'s request list; a peer benchmark builds its list
with it from the same flags (or reads the list ``--save-requests`` wrote), and
``requests_digest`` names a list, so two results can show they ran the same requests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path


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


DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN = 56, 128  # the random dataset's lengths when no flag gives them


def workload_from_args(args: argparse.Namespace, vocab_size: int) -> list[BenchRequest]:
    """The request list of ``pagoda bench throughput`` for its dataset flags (``add_dataset_args``).

    ``--input-len`` and ``--range-ratio`` (None when not given) shape the random dataset only: with another
    dataset they are refused, never ignored. ``--output-len`` replaces the output lengths of every dataset
    (vLLM's rule)."""
    in_len, out_len = getattr(args, "input_len", None), getattr(args, "output_len", None)
    r = getattr(args, "range_ratio", None)
    if getattr(args, "dataset_path", None) is not None:
        raise ValueError(f"--dataset-path {args.dataset_path}: pagoda's benchmarks read no dataset file; "
                         f"--dataset random, sharegpt (a synthetic ShareGPT-shaped workload) and prefix_repetition "
                         f"are generated with --seed.")
    if args.dataset != "random":
        for flag, value in (("--input-len", in_len), ("--range-ratio", r)):
            if value is not None:
                raise ValueError(f"{flag} shapes the random dataset only; --dataset {args.dataset} has its own "
                                 f"prompt lengths (drop {flag}).")
    if args.dataset == "sharegpt":
        reqs = sharegpt_like_requests(args.num_prompts, vocab_size, args.seed)
        return reqs if out_len is None else [BenchRequest(q.prompt_token_ids, out_len) for q in reqs]
    if args.dataset == "prefix_repetition":
        return prefix_repetition_requests(
            args.num_prompts, args.prefix_repetition_prefix_len, args.prefix_repetition_suffix_len,
            args.prefix_repetition_num_prefixes, out_len or args.prefix_repetition_output_len, vocab_size, args.seed)
    r = 0.0 if r is None else r
    in_len = DEFAULT_INPUT_LEN if in_len is None else in_len
    out_len = DEFAULT_OUTPUT_LEN if out_len is None else out_len
    if not 0.0 <= r < 1.0:  # vLLM's random dataset: lengths within len*(1-r) .. len*(1+r), never clamped to 1
        raise ValueError(f"--range-ratio must be in [0, 1), got {r}.")
    for flag, n in (("--input-len", in_len), ("--output-len", out_len)):
        if n < 1:
            raise ValueError(f"{flag} must be at least 1, got {n}.")

    def span(n: int) -> tuple[int, int]:
        return max(1, int(n * (1 - r))), int(n * (1 + r))

    return random_requests(args.num_prompts, span(in_len), span(out_len), vocab_size, args.seed)


def _as_json(reqs: list[BenchRequest]) -> list[dict]:
    return [{"prompt_token_ids": r.prompt_token_ids, "output_len": r.output_len, "prefix_id": r.prefix_id}
            for r in reqs]


def requests_digest(reqs: list[BenchRequest]) -> str:
    """sha256 (first 16 hex digits) of the prompts and output lengths, in order."""
    blob = json.dumps(_as_json(reqs), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_requests(path: str | Path, reqs: list[BenchRequest]) -> None:
    Path(path).write_text(json.dumps({"digest": requests_digest(reqs), "requests": _as_json(reqs)}))


def load_requests(path: str | Path) -> list[BenchRequest]:
    """A list written by ``save_requests``; its digest is checked."""
    data = json.loads(Path(path).read_text())
    reqs = [BenchRequest(list(r["prompt_token_ids"]), int(r["output_len"]), r.get("prefix_id"))
            for r in data["requests"]]
    if data.get("digest") not in (None, requests_digest(reqs)):
        raise ValueError(f"{path}: the request list does not match its digest (edited or truncated?)")
    return reqs
