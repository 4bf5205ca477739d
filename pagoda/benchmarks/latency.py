"""``pagoda bench latency``: one batch of fixed size, input and output lengths.

Reports end-to-end time, time until every prompt is prefilled (the outputs of the last
step with prompt tokens are on the host), and the median / p90 latency of the pure decode
steps (every request decoding one token, no prefill chunk in the step), each ``step()``
call timed on its own: it returns once a step's sampled tokens are on the host, so with
async scheduling (where a call launches step N and returns step N-1's tokens) it is the
time between two tokens of the batch. ``--output-len 1`` (as vLLM runs it) is a prefill-only run: there is no
decode step to time, and the run says so (the decode-step figures are None).

With ``--speculative-config`` every such step verifies the proposals of each request (and may
give several tokens per request). For timing the verify step alone, the timing-only method
``{"method": "synthetic", "num_speculative_tokens": k}`` proposes ``k`` tokens for every request
every step (copies of its last token: verification stays exact, acceptance is whatever the model
gives, usually none), so the decode-step figures become the cost of a verify-k step: compare them
with the same command without the config.

``--step-timeline PATH`` records every engine step of the timed iterations (run label ``batch<N>``;
:mod:`pagoda.engine.step_timeline`).

vLLM's ``vllm bench latency`` defaults (batch 8, input 32, output 128, 10 warm-up and 30 timed iterations, ``--n 1``,
prefix caching off, outputs detokenized unless ``--disable-detokenize``) are this command's. The requests run
greedy (vLLM samples at temperature 1): the same tokens on every run, so two runs, or two engines, time the same
work (a sampling step costs the same either way on pagoda's sampler). vLLM's flags this command does not honour
are refused by name (:data:`pagoda.benchmarks.vllm_bench_flags.LATENCY`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterator


def add_args(p: argparse.ArgumentParser) -> None:
    from pagoda.arg_utils import non_negative_int, positive_int
    from pagoda.benchmarks.vllm_bench_flags import LATENCY, add_refused_args
    from pagoda.entrypoints.cli import add_engine_args

    add_engine_args(p)
    # vLLM: prefix caching skews the latency of repeated prompts, so bench latency runs without it by default
    p.set_defaults(enable_prefix_caching=False)
    p.add_argument("--batch-size", type=positive_int, nargs="+", default=[8],
                   help="requests in the batch (several values: one run each, same engine)")
    p.add_argument("--input-len", type=positive_int, default=32, help="prompt tokens per request")
    p.add_argument("--output-len", type=positive_int, default=128,
                   help="new tokens per request (1: prefill only, no decode step to time)")
    p.add_argument("--n", type=positive_int, default=1, help="sequences generated per prompt")
    p.add_argument("--num-iters", type=positive_int, default=30, help="timed iterations")
    p.add_argument("--num-iters-warmup", type=non_negative_int, default=10, help="warm-up iterations")
    p.add_argument("--disable-detokenize", action="store_true",
                   help="do not detokenize the outputs (detokenization left out of the timings)")
    p.add_argument("--output-json", type=str, default=None, help="write results to this JSON file")
    add_step_timeline_arg(p)
    add_refused_args(p, LATENCY)


def add_step_timeline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--step-timeline", type=str, default=None, metavar="PATH",
                   help="record every engine step of the timed runs to PATH (JSON lines: batch, tokens, wall times, "
                        "forward path, host wait; pagoda/engine/step_timeline.py); summarize it with "
                        "benchmarks/step_timeline_report.py")


def timed_steps(engine, prompts: list[list[int]], max_tokens: int, tag: str, n: int = 1,
                detokenize: bool = False) -> tuple[float, float, list[float]]:
    """Run ``prompts`` together (greedy, ``ignore_eos``, ``max_tokens`` each, ``n`` sequences each) on an idle
    engine, timing each ``step()``: (end-to-end seconds, seconds until the last step with prompt tokens returned,
    durations of the pure decode steps of the whole batch)."""
    from pagoda import SamplingParams

    sp = SamplingParams(n=n, temperature=0, max_tokens=max_tokens, ignore_eos=True, detokenize=detokenize)
    for i, ids in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", {"prompt_token_ids": ids}, sp, final_only=True)
    t0 = time.perf_counter()
    prefill = None
    steps: list[float] = []
    while engine.has_unfinished_requests():
        ts = time.perf_counter()
        engine.step()
        te = time.perf_counter()
        stats = engine.last_stats
        if stats.num_prompt_tokens:
            prefill = te - t0  # the outputs of a step with prompt tokens are on the host
        elif stats.num_generation_tokens >= len(prompts):
            steps.append(te - ts)  # a pure decode (or verify) step of the whole batch
    return time.perf_counter() - t0, prefill or 0.0, steps


def _one(engine, args, seed: int) -> tuple[float, float, list[float]]:
    import random

    rng = random.Random(seed)
    vocab = int(engine.cfg.hf_config["vocab_size"])
    prompts = [[rng.randint(10, min(1000, vocab - 1)) for _ in range(args.input_len)] for _ in range(args.batch_size)]
    return timed_steps(engine, prompts, args.output_len, f"lat-{seed}", args.n, not args.disable_detokenize)


@contextlib.contextmanager
def recording(core, path: str | None, run: str) -> Iterator[None]:
    """Attach a step timeline appending to ``path`` (run label ``run``) to the engine core for the block;
    nothing when ``path`` is None."""
    if path is None:
        yield
        return
    from pagoda.engine.step_timeline import StepTimeline

    core.step_timeline = StepTimeline(path, run=run, append=True)
    try:
        yield
    finally:
        core.step_timeline.close()
        core.step_timeline = None


def main(args: argparse.Namespace) -> None:
    from pagoda.config import EngineArgs
    from pagoda.engine.llm_engine import LLMEngine
    from pagoda.entrypoints.cli import engine_kwargs

    engine = LLMEngine.from_engine_args(EngineArgs(**engine_kwargs(args)))
    if args.step_timeline:
        open(args.step_timeline, "w").close()  # each batch size appends its timed iterations (run "batch<N>")
    all_res = []
    for bs in args.batch_size:
        all_res.append(_run_batch(engine, args, bs))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(all_res if len(all_res) > 1 else all_res[0], f, indent=2)


VLLM_PERCENTILES = (10, 25, 50, 75, 90, 99)  # the percentiles vLLM's bench latency reports


def vllm_latency_keys(e2e: list[float]) -> dict:
    """vLLM's ``bench latency --output-json`` figures of the timed iterations' end-to-end seconds: mean,
    population std, the list, and percentiles 10..99 (linear interpolation, numpy's default)."""
    from pagoda.benchmarks.stream_timing import percentile

    mean = statistics.fmean(e2e)
    return {"avg_latency": mean, "std_latency": statistics.pstdev(e2e), "latencies": list(e2e),
            "percentiles": {str(q): percentile(e2e, q) for q in VLLM_PERCENTILES}}


def _run_batch(engine, args: argparse.Namespace, batch_size: int) -> dict:
    args = argparse.Namespace(**{**vars(args), "batch_size": batch_size})
    for i in range(args.num_iters_warmup):
        _one(engine, args, 1000 + i)
    e2e, pre, steps = [], [], []
    with recording(engine.core, args.step_timeline, f"batch{batch_size}"):
        for i in range(args.num_iters):
            a, b, c = _one(engine, args, i)
            e2e.append(a)
            pre.append(b)
            steps.extend(c)
    steps.sort()
    res = {
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "n": args.n,
        "e2e_s_median": statistics.median(e2e),
        "prefill_s_median": statistics.median(pre),
        "decode_step_ms_median": 1000 * statistics.median(steps) if steps else None,
        "decode_step_ms_p90": 1000 * steps[int(0.9 * (len(steps) - 1))] if steps else None,
        "output_tokens_per_s": args.batch_size * args.n * args.output_len / statistics.median(e2e),
        "startup_s": engine.core.startup_seconds,
        "graph_capture_s": engine.core.graph_capture_seconds,
        "device": str(engine.cfg.device),
        **vllm_latency_keys(e2e),
    }
    if steps:
        decode = (f"decode step median {res['decode_step_ms_median']:.2f} ms "
                  f"(p90 {res['decode_step_ms_p90']:.2f} ms)")
    elif args.output_len == 1:
        decode = "no decode step (output length 1: the prefill gives the only token)"
    else:
        decode = "no pure decode step of the whole batch to time"
    print(
        f"batch {args.batch_size}, in {args.input_len}, out {args.output_len}: e2e {res['e2e_s_median']:.3f} s "
        f"(avg {res['avg_latency']:.3f} s), "
        f"prefill {res['prefill_s_median'] * 1000:.1f} ms, {decode}, {res['output_tokens_per_s']:.1f} output tok/s"
    )
    return res
