"""``pagoda bench serve``: an online load generator for any OpenAI-compatible server.

Sends seeded synthetic prompts to ``/v1/completions`` (or ``/v1/chat/completions``) with
streaming, either at a request rate (Poisson arrivals, or gamma with ``--burstiness``)
or all at once under ``--max-concurrency``, and reports vLLM's serving metrics:

* TTFT  time to the first streamed chunk that carries a token (text or not);
* TPOT  (latency - TTFT) / (output tokens - 1), per request;
* ITL   gaps between tokens: a chunk of k tokens adds k gaps of (its gap / k);
* E2EL  time to the last token;

as mean / median / chosen percentiles (default p50, p90, p99), plus request, output-token
and total-token throughput, and with ``--goodput`` vLLM's request goodput (``meets_slos``).
``--save-result`` writes everything (per-request figures included) as JSON, under vLLM's keys
where vLLM has the figure. vLLM's ``--backend``, ``--input-len`` and ``--output-len`` stand for
pagoda's flags (``resolve_args``); ``--dataset-path`` is refused (every dataset is generated). Every other flag of
vLLM's ``bench serve`` is honoured with vLLM's meaning (``--header``, ``--served-model-name``, the sampling flags,
``--num-warmups``, ``--ready-check-timeout-sec``, ``--metadata``, ``--append-result``, ...) or refused by name
(:data:`pagoda.benchmarks.vllm_bench_flags.SERVE`). As in vLLM, the random dataset sends ``ignore_eos``
(``--no-ignore-eos`` turns it off) and each request carries ``X-Request-Id: <--request-id-prefix><index>``.

Prompts are made of words drawn from a fixed list with ``--seed``; when the server has
``/tokenize`` (pagoda, vLLM) or ``--tokenizer`` names a local tokenizer, each prompt is
words adding up to at most ``--random-input-len`` tokens (exactly that many unless no
word fits the remainder); otherwise the length is estimated.
Tokens are counted per chunk from the usage the server adds to every chunk
(``stream_options.continuous_usage_stats``), else from logprobs, else one per chunk
(``stream_timing.py`` states the rules); a request's output tokens come from the final usage
report when the server sends one. A request that received no token, or whose tokens all came
in one chunk, is left out of the latencies it cannot have (counted and printed as such):
no latency is ever reported as zero, and a series with no value prints "n/a".

``--dataset-name prefix_repetition`` (vLLM's dataset and flags) sends prompts made of one
of ``--prefix-repetition-num-prefixes`` shared prefixes plus a per-request suffix. It then
also reports the server's prefix-cache hit rate over the run (from the
``prefix_cache_queries`` / ``prefix_cache_hits`` counters of ``/metrics``, pagoda's or
vLLM's) and the TTFT of requests whose prefix was sent for the first time against those
repeating one (with ``--max-concurrency 1`` every repeat finds its prefix cached).
``--reset-prefix-cache`` empties the server's prefix cache (``POST /reset_prefix_cache``)
before the timed run, so a rerun starts as cold as the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pagoda import envs
from pagoda.arg_utils import non_negative_int, positive_int, range_ratio
from pagoda.benchmarks.server_process import CpuSnapshot, LaunchedServer, cpu_report
from pagoda.benchmarks.stream_load import DEFAULT_BURST_FRACTION, load_figures
from pagoda.benchmarks.stream_timing import TokenTimeline, UsageCursor, chunk_text, chunk_tokens, tpot
from pagoda.benchmarks.stream_timing import percentile as _percentile

WORDS = (
    "the of and to in is was for on are with as his they be at one have this from or had by word but what some "
    "we can out other were all there when up use your how said an each she which do their time if will way about "
    "many then them write would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been now find any new work "
    "part take get place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line differ turn cause much mean before "
    "move right boy old too same tell does set three want air well also play small end put home read hand port "
    "large spell add even land here must big high such follow act why ask men change went light kind off need "
    "house picture try us again animal point mother world near build self earth father head stand own page should "
    "country found answer school grow study still learn plant cover food sun four between state keep eye never "
    "last let thought city tree cross farm hard start might story saw far sea draw left late run while press close "
    "night real life few north open seem together next white children begin got walk example ease paper group "
    "always music those both mark often letter until mile river car feet care second book carry took science eat "
    "room friend began idea fish mountain stop once base hear horse cut sure watch color face wood main enough "
    "plain girl usual young ready above ever red list though feel talk bird soon body dog family direct pose leave "
    "song measure door product black short numeral class wind question happen complete ship area half rock order "
    "fire south problem piece told knew pass since top whole king space heard best hour better true during hundred"
).split()


@dataclass
class RequestResult:
    """One request's outcome. ``ttft``/``latency`` are None when no token arrived (see stream_timing)."""

    ok: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float | None = None
    latency: float | None = None
    itl: list[float] = field(default_factory=list)
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (gap, tokens) after the first (stream_timing)
    error: str = ""
    text: str = ""
    sent_at: float = 0.0  # wall clock (time.time()) when the request was sent
    response_id: str = ""  # the response's "id" (the server's request id; joins PAGODA_REQUEST_TRACE lines)

    @property
    def tpot(self) -> float | None:
        return tpot(self.ttft, self.latency, self.output_tokens)


SAMPLING_FLAGS = ("top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")
"""vLLM's sampling flags of bench serve, sent as request fields of the same names when given."""
METRICS = ("ttft", "tpot", "itl", "e2el")  # the latency metrics --percentile-metrics may name
GOODPUT_METRICS = ("ttft", "tpot", "e2el")  # the per-request metrics --goodput may bound (vLLM's)
# vLLM's --backend names of the two OpenAI APIs this benchmark drives, and the endpoint each one means
BACKEND_ENDPOINTS = {"vllm": "/v1/completions", "openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}


def burstiness(text: str) -> float:
    """``--burstiness``: a gamma shape > 0 (``inf``: constant intervals), as vLLM requires."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive (1 = Poisson), got {text}")
    return value


def percentile_metrics(text: str) -> str:
    """``--percentile-metrics``: a comma-separated, non-empty subset of ``METRICS`` (normalized)."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(unknown) or repr(text)}: "
                                         f"choose from {', '.join(METRICS)}")
    return ",".join(names)


def metric_percentiles(text: str) -> str:
    """``--metric-percentiles``: comma-separated numbers, each in [0, 100] (normalized)."""
    out = []
    for part in [x.strip() for x in text.split(",") if x.strip()]:
        try:
            q = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part!r}") from None
        if not 0 <= q <= 100:
            raise argparse.ArgumentTypeError(f"a percentile must be in [0, 100], got {part}")
        out.append(part)
    if not out:
        raise argparse.ArgumentTypeError(f"no percentile in {text!r}")
    return ",".join(out)


def goodput_slo(text: str) -> tuple[str, float]:
    """One ``--goodput`` objective, ``KEY:VALUE`` with KEY in ``GOODPUT_METRICS`` and VALUE >= 0 ms."""
    key, sep, value = text.partition(":")
    try:
        ms = float(value) if sep else float("nan")
    except ValueError:
        ms = float("nan")
    if key not in GOODPUT_METRICS or not ms >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY:VALUE with KEY one of {', '.join(GOODPUT_METRICS)} "
                                         f"and VALUE a non-negative number of milliseconds (e.g. ttft:500)")
    return key, ms


def key_values(flag: str, items: list[str] | None) -> dict[str, str]:
    """vLLM's ``KEY=VALUE`` list flags (``--header``, ``--metadata``) as a dict; ValueError naming the flag and item
    for one without ``=``."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {item!r}: give KEY=VALUE, e.g. {flag} x-version=1")
        out[key.strip()] = value.strip()
    return out


def resolve_args(args: argparse.Namespace) -> None:
    """vLLM's flags that stand for others, resolved in place, and the combinations refused (ValueError naming the
    flags): ``--backend`` -> ``--endpoint``; ``--input-len`` / ``--output-len`` -> the dataset's lengths; a
    dataset's own flag with another dataset; ``--ignore-eos`` left unset -> on for the random dataset (vLLM's)."""
    if args.dataset_path is not None:
        raise ValueError(f"--dataset-path {args.dataset_path}: pagoda bench serve reads no dataset file; its "
                         f"--dataset-name random, sharegpt (a synthetic ShareGPT-shaped workload) and "
                         f"prefix_repetition are generated with --seed.")
    if args.backend is not None:
        wanted = BACKEND_ENDPOINTS[args.backend]
        if args.endpoint is not None and args.endpoint != wanted:
            raise ValueError(f"--backend {args.backend} sends to {wanted}, not --endpoint {args.endpoint}: drop one "
                             f"of them or make them agree (openai-chat for /v1/chat/completions).")
        args.endpoint = wanted
    elif args.endpoint is None:
        args.endpoint = "/v1/completions"
    for flag, given, dataset in (("--input-len", args.input_len is not None, "random"),
                                 ("--random-prefix-len", args.random_prefix_len > 0, "random"),
                                 ("--sharegpt-output-len", args.sharegpt_output_len is not None, "sharegpt")):
        if given and args.dataset_name != dataset:
            raise ValueError(f"{flag} shapes the {dataset} dataset only; --dataset-name {args.dataset_name} has its "
                             f"own prompts and lengths (drop {flag}).")
    if args.input_len is not None:
        args.random_input_len = args.input_len
    if args.output_len is not None:
        args.random_output_len = args.prefix_repetition_output_len = args.sharegpt_output_len = args.output_len
    if args.ignore_eos is None:  # vLLM: the random dataset runs every request to its output length
        args.ignore_eos = args.dataset_name == "random"
    if args.skip_tokenizer_init and args.tokenizer:
        raise ValueError(f"--skip-tokenizer-init loads no tokenizer: drop it or --tokenizer {args.tokenizer}.")
    args.header = key_values("--header", args.header)
    args.metadata = key_values("--metadata", args.metadata)


def add_bench_serve_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.description = "Online serving benchmark against an OpenAI-compatible server (streaming)."
    p.add_argument("--base-url", default=None, help="server URL, e.g. http://127.0.0.1:8000 (overrides --host/--port)")
    p.add_argument("--host", default="127.0.0.1", help="server host")
    p.add_argument("--port", type=int, default=8000, help="server port")
    p.add_argument("--backend", default=None, choices=sorted(BACKEND_ENDPOINTS),
                   help="vLLM's name of the API: vllm or openai (/v1/completions), openai-chat (/v1/chat/completions); "
                        "it must agree with --endpoint when both are given")
    p.add_argument("--endpoint", default=None, choices=["/v1/completions", "/v1/chat/completions"],
                   help="API to exercise (default: --backend's, else /v1/completions)")
    p.add_argument("--model", default=None, help="model name to send (default: the first of GET /v1/models)")
    p.add_argument("--served-model-name", default=None,
                   help="the name sent in requests when it differs from --model (vLLM's; default: --model)")
    p.add_argument("--lora-modules", nargs="+", default=None, metavar="NAME",
                   help="LoRA adapter names the server serves (its --lora-modules): each request names one of them as "
                        "its model, by --lora-assignment (vLLM's)")
    p.add_argument("--lora-assignment", default="random", choices=["random", "round-robin"],
                   help="how requests pick from --lora-modules: at random (with --seed), or in turn by request index")
    p.add_argument("--header", nargs="*", default=None, metavar="KEY=VALUE",
                   help="headers sent with every request (they override the API key's Authorization)")
    p.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    p.add_argument("--ready-check-timeout-sec", type=int, default=0,
                   help="wait up to this many seconds for the server to answer GET /v1/models (0: no wait)")
    p.add_argument("--api-key", default=None, help="bearer token (default: $OPENAI_API_KEY or $PAGODA_API_KEY)")
    p.add_argument("--num-prompts", type=int, default=64, help="number of requests")
    p.add_argument("--dataset-name", default="random", choices=["random", "sharegpt", "prefix_repetition"],
                   help="random: word prompts of --random-input-len tokens; sharegpt: the prompt and output lengths "
                        "of bench throughput's ShareGPT-like workload (same --seed, same lengths); prefix_repetition: "
                        "shared prefixes (--prefix-repetition-* flags)")
    p.add_argument("--random-input-len", type=positive_int, default=56, help="prompt tokens per request")
    p.add_argument("--random-output-len", type=positive_int, default=128, help="max_tokens per request")
    p.add_argument("--input-len", type=positive_int, default=None,
                   help="vLLM's general input length: sets --random-input-len (random dataset only)")
    p.add_argument("--output-len", type=positive_int, default=None,
                   help="vLLM's general output length: sets --random-output-len and --prefix-repetition-output-len, "
                        "and replaces the sharegpt dataset's output lengths")
    p.add_argument("--dataset-path", default=None,
                   help="refused: pagoda's datasets are synthetic (vLLM reads a ShareGPT or custom file here)")
    p.add_argument("--random-range-ratio", type=range_ratio, default=0.0,
                   help="lengths drawn uniformly from [len*(1-r), len*(1+r)], r in [0, 1)")
    p.add_argument("--random-prefix-len", type=non_negative_int, default=0,
                   help="random dataset: tokens of one fixed prefix before every prompt (the prompt is the prefix "
                        "plus --random-input-len tokens, as vLLM's)")
    p.add_argument("--sharegpt-output-len", type=positive_int, default=None,
                   help="sharegpt dataset: every request's output length (default: the dataset's)")
    p.add_argument("--disable-shuffle", action="store_true",
                   help="prefix_repetition: requests in prefix order, not shuffled (the other datasets are unshuffled)")
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests per second (Poisson arrivals); inf sends them all at once")
    p.add_argument("--burstiness", type=burstiness, default=1.0,
                   help="gamma shape of inter-arrival times, > 0 (1 = Poisson; lower is burstier; inf: constant "
                        "intervals of 1 / --request-rate)")
    p.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most")
    p.add_argument("--num-client-processes", type=int, default=1,
                   help="load-generator processes sharing the requests and --max-concurrency (one Python process "
                        "parsing many streams lags them and merges their chunks; pagoda/benchmarks/client_pool.py)")
    p.add_argument("--seed", type=int, default=0, help="seed for prompts and arrival times")
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None,
                   help="send ignore_eos so every request runs to max_tokens (default: on for the random dataset, as "
                        "vLLM's; --no-ignore-eos for a server that refuses the field)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature sent with each request (0: greedy; vLLM's now leaves it to the server)")
    for flag, kind, what in (("--top-p", float, "top_p"), ("--top-k", int, "top_k"), ("--min-p", float, "min_p"),
                             ("--frequency-penalty", float, "frequency_penalty"),
                             ("--presence-penalty", float, "presence_penalty"),
                             ("--repetition-penalty", float, "repetition_penalty")):
        p.add_argument(flag, type=kind, default=None, help=f"{what} sent with each request (default: not sent)")
    p.add_argument("--logprobs", type=int, default=None,
                   help="logprobs per token asked for (chat: top_logprobs; default: none)")
    p.add_argument("--request-id-prefix", default=f"bench-{uuid.uuid4().hex[:8]}-",
                   help="each request's X-Request-Id is this prefix plus its index (default: bench-<random>-)")
    p.add_argument("--num-warmups", type=non_negative_int, default=0,
                   help="untimed warm-up requests after the test request (the workload's first prompts)")
    p.add_argument("--skip-tokenizer-init", action="store_true",
                   help="load no local tokenizer (the default unless --tokenizer: prompts are counted with /tokenize)")
    p.add_argument("--extra-body", default=None,
                   help='JSON object merged into every request, e.g. \'{"logit_bias": {"2": -100}}\'')
    p.add_argument("--tokenizer", default=None, help="local tokenizer for exact prompt lengths (default: /tokenize)")
    p.add_argument("--percentile-metrics", type=percentile_metrics, default="ttft,tpot,itl,e2el",
                   help="comma-separated metrics to report (of ttft, tpot, itl, e2el)")
    p.add_argument("--metric-percentiles", type=metric_percentiles, default="50,90,99",
                   help="comma-separated percentiles to report, each in [0, 100]")
    p.add_argument("--goodput", type=goodput_slo, nargs="+", default=None, metavar="KEY:VALUE",
                   help="service level objectives in ms (ttft, tpot, e2el), e.g. ttft:500 tpot:50: reports "
                        "request_goodput, the requests/s that met every one (vLLM's definition)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds before a request is failed")
    p.add_argument("--save-result", action="store_true", help="write the result as JSON")
    p.add_argument("--append-result", action="store_true",
                   help="append the result to the file as one more JSON document (implies --save-result)")
    p.add_argument("--result-dir", default=".", help="folder for --save-result")
    p.add_argument("--result-filename", default=None,
                   help="file name for --save-result (default, vLLM's: LABEL-RATEqps[-concurrencyN]-MODEL-DATE.json)")
    p.add_argument("--metadata", nargs="*", default=None, metavar="KEY=VALUE",
                   help="pairs saved as keys of the result")
    p.add_argument("--label", default=None, help="name of this run in the saved result")
    p.add_argument("--reset-prefix-cache", action="store_true",
                   help="POST /reset_prefix_cache before the timed run (a cold prefix cache on every rerun)")
    p.add_argument("--burst-fraction", type=float, default=DEFAULT_BURST_FRACTION,
                   help="a chunk arriving less than this fraction of its request's TPOT after the previous one "
                        "counts as a burst chunk (pagoda/benchmarks/stream_load.py)")
    g = p.add_argument_group("server process (CPU time per output token)")
    g.add_argument("--serve-cmd", default=None,
                   help="start this server command (no shell; e.g. 'pagoda serve MODEL --port 8000') before the "
                        "run, wait for /health, stop it afterwards, and report its API server's and engine "
                        "core's CPU time")
    g.add_argument("--serve-timeout", type=float, default=600.0, help="seconds --serve-cmd may take to be ready")
    g.add_argument("--serve-log", default=None, help="file for --serve-cmd's output (default: a temporary file)")
    g.add_argument("--server-pid", type=int, default=None,
                   help="pid of the API server process of a server on this host that the bench did not start: "
                        "report its CPU time (and its engine core's)")
    from pagoda.benchmarks.throughput import add_prefix_repetition_args
    from pagoda.benchmarks.vllm_bench_flags import SERVE, add_refused_args

    add_prefix_repetition_args(p)
    add_refused_args(p, SERVE)
    return p


# ------------------------------------------------------------------------ prompts
class _Counter:
    """Counts prompt tokens with a local tokenizer, the server's /tokenize, or an estimate."""

    def __init__(self, args: argparse.Namespace, client: Any, base: str, headers: dict[str, str], model: str) -> None:
        self.args, self.client, self.base, self.headers, self.model = args, client, base, headers, model
        self.local = None
        self.remote = True
        self.exact = True
        if args.tokenizer:
            from transformers import AutoTokenizer

            self.local = AutoTokenizer.from_pretrained(args.tokenizer)

    async def count(self, text: str) -> int | None:
        if self.local is not None:
            return len(self.local.encode(text, add_special_tokens=False))
        if self.remote:
            try:
                r = await self.client.post(f"{self.base}/tokenize", headers=self.headers,
                                           json={"model": self.model, "prompt": text, "add_special_tokens": False})
                if r.status_code == 200:
                    return int(r.json()["count"])
            except Exception:
                pass
            self.remote = False
        self.exact = False
        return None


async def make_prompts(args: argparse.Namespace, counter: _Counter) -> list[tuple[str, int, int]]:
    """(prompt, prompt tokens, output tokens) per request, seeded."""
    rng = random.Random(args.seed)
    r = args.random_range_ratio

    def draw(n: int) -> int:
        return max(1, rng.randint(int(n * (1 - r)), int(math.ceil(n * (1 + r)))))

    out = []
    sharegpt = _sharegpt_lengths(args) if args.dataset_name == "sharegpt" else None
    prefix_len = getattr(args, "random_prefix_len", 0)
    prefix = await words_text(rng, counter, prefix_len) if prefix_len else None  # vLLM: one prefix for all
    for i in range(args.num_prompts):
        if sharegpt is None:
            n_in, n_out = draw(args.random_input_len), draw(args.random_output_len)
        else:
            n_in, n_out = sharegpt[i]
            n_out = getattr(args, "sharegpt_output_len", None) or n_out  # vLLM: it replaces the dataset's
        text, n = await words_text(rng, counter, n_in)
        if prefix is not None:
            text = prefix[0] + " " + text
            n = await counter.count(text) or prefix[1] + n
        out.append((text, n, n_out))
    return out


def _sharegpt_lengths(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(prompt, output) lengths of ``bench throughput --dataset sharegpt`` with this seed; its token ids are
    drawn below 1000 for every vocabulary over 1000, so the lengths do not depend on the model."""
    from pagoda.benchmarks.datasets import sharegpt_like_requests

    return [(len(r.prompt_token_ids), r.output_len) for r in sharegpt_like_requests(args.num_prompts, 2**31, args.seed)]


async def make_prefix_repetition_prompts(args: argparse.Namespace, counter: _Counter
                                         ) -> tuple[list[tuple[str, int, int]], list[int]]:
    """vLLM's prefix_repetition: request i is prefix i % num_prefixes + its own suffix, shuffled with the seed.
    Returns the prompts (as make_prompts) and each one's prefix id."""
    num_prefixes = args.prefix_repetition_num_prefixes
    plen, slen, n_out = (args.prefix_repetition_prefix_len, args.prefix_repetition_suffix_len,
                         args.prefix_repetition_output_len)
    if num_prefixes < 1 or plen < 1 or slen < 0 or n_out < 1:
        raise ValueError("prefix_repetition needs at least 1 prefix of at least 1 token and an output length >= 1.")
    rng = random.Random(args.seed)
    prefixes = [await words_text(rng, counter, plen) for _ in range(num_prefixes)]
    out = []
    for i in range(args.num_prompts):
        ptext, pn = prefixes[i % num_prefixes]
        text, n = ptext, pn
        if slen:
            stext, sn = await words_text(rng, counter, slen)
            text = ptext + " " + stext
            n = await counter.count(text) or pn + sn
        out.append(((text, n, n_out), i % num_prefixes))
    if not getattr(args, "disable_shuffle", False):
        rng.shuffle(out)
    return [p for p, _ in out], [pid for _, pid in out]


async def words_text(rng: random.Random, counter: _Counter, n_in: int) -> tuple[str, int]:
    """Seeded words adding up to at most ``n_in`` tokens (exactly, unless no word fits the rest);
    (text, its token count, or n_in when the count is only estimated)."""
    words = [rng.choice(WORDS) for _ in range(n_in)]  # ~1 token per common word; trimmed below
    text = " ".join(words)
    n = await counter.count(text)
    if n is None:
        text = " ".join(words[: max(1, int(n_in / 1.2))])
        return text, n_in
    lo, hi = 1, len(words)
    while lo < hi:  # longest prefix with at most n_in tokens
        mid = (lo + hi + 1) // 2
        c = await counter.count(" ".join(words[:mid]))
        if c is not None and c <= n_in:
            lo = mid
        else:
            hi = mid - 1
    words = words[:lo]
    n = await counter.count(" ".join(words)) or 0
    tries = 0
    while n < n_in and tries < 32:  # top up with words that still fit
        tries += 1
        cand = await counter.count(" ".join(words + [w := rng.choice(WORDS)]))
        if cand is not None and cand <= n_in:
            words.append(w)
            n = cand
    return " ".join(words), n or n_in


# ----------------------------------------------------------------------- requests
async def send_one(client: Any, url: str, headers: dict[str, str], payload: dict[str, Any], chat: bool,
                   prompt_len: int) -> RequestResult:
    """Send one streaming request and time its tokens (rules in stream_timing)."""
    res = RequestResult(prompt_len=prompt_len, sent_at=time.time())
    timeline = TokenTimeline(start=time.perf_counter())
    cursor = UsageCursor()
    usage_tokens = None
    try:
        async with client.stream("POST", url, headers=headers, json=payload) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                res.error = f"HTTP {resp.status_code}: {body[:300]}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                obj = json.loads(data)
                if "error" in obj:
                    res.error = str(obj["error"].get("message", obj["error"]))
                    return res
                if not res.response_id:
                    res.response_id = str(obj.get("id", ""))
                timeline.add(now, chunk_tokens(obj, chat, cursor))
                if not obj.get("choices") and obj.get("usage"):
                    usage_tokens = obj["usage"].get("completion_tokens", usage_tokens)
                res.text += chunk_text(obj, chat)
        res.ttft, res.latency, res.itl, res.chunks = timeline.ttft, timeline.latency, timeline.itl, timeline.chunks
        res.output_tokens = usage_tokens if usage_tokens is not None else max(timeline.tokens,
                                                                             cursor.completion_tokens)
        res.ok = True
    except Exception as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


def request_model(args: argparse.Namespace, model: str, index: int) -> str:
    """The model a request names: ``model``, or with ``--lora-modules`` one of them for request ``index`` (in
    turn, or drawn with ``--seed``: the same workload and seed give every request the same adapter)."""
    modules = getattr(args, "lora_modules", None)
    if not modules:
        return model
    if args.lora_assignment == "round-robin":
        return modules[index % len(modules)]
    return random.Random(f"{args.seed}:lora:{index}").choice(modules)


def _payload(args: argparse.Namespace, model: str, prompt: str, n_out: int, chat: bool) -> dict[str, Any]:
    p: dict[str, Any] = {"model": model, "max_tokens": n_out, "temperature": args.temperature, "stream": True,
                         # usage on every chunk: tokens per chunk even when their text is empty (stream_timing)
                         "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    if chat:
        p["messages"] = [{"role": "user", "content": prompt}]
    else:
        p["prompt"] = prompt
    if args.ignore_eos:
        p["ignore_eos"] = True
    for k in SAMPLING_FLAGS:
        if getattr(args, k, None) is not None:
            p[k] = getattr(args, k)
    if getattr(args, "logprobs", None) is not None:
        p.update({"logprobs": True, "top_logprobs": args.logprobs} if chat else {"logprobs": args.logprobs})
    if args.extra_body:
        p.update(args.extra_body)
    return p


def _ms(x: float | None) -> float | None:
    return None if x is None else 1000 * x


def latency_series(results: list[RequestResult]) -> dict[str, list[float]]:
    """Each latency metric over the requests that have it (stream_timing: none is ever a stand-in zero)."""
    ok = [r for r in results if r.ok]
    return {
        "ttft": [r.ttft for r in ok if r.ttft is not None],
        "tpot": [t for r in ok if (t := r.tpot) is not None],
        "itl": [x for r in ok for x in r.itl],
        "e2el": [r.latency for r in ok if r.latency is not None],
    }


def meets_slos(r: RequestResult, slos: dict[str, float]) -> bool:
    """Whether the successful request ``r`` met every objective (ms) of ``slos``, as vLLM's goodput counts:
    TTFT and E2EL at most their bound; TPOT (latency - TTFT) / (output tokens - 1), 0 for one token. A request
    that received no token has no TTFT and meets no objective."""
    if r.ttft is None or r.latency is None:
        return False
    tpot_s = (r.latency - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
    values = {"ttft": r.ttft, "tpot": tpot_s, "e2el": r.latency}
    return all(values[k] <= ms / 1000 for k, ms in slos.items())


def summarize(args: argparse.Namespace, results: list[RequestResult], duration: float) -> dict[str, Any]:
    """Throughput over the successful requests; mean / median / std / percentiles of each latency
    metric in ms (None where no request has that metric)."""
    ok = [r for r in results if r.ok]
    total_out = sum(r.output_tokens for r in ok)
    total_in = sum(r.prompt_len for r in ok)
    series = latency_series(results)
    pcts = [float(x) for x in args.metric_percentiles.split(",") if x.strip()]
    wanted = [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]
    out: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        # left out of the latencies they cannot have, never counted as zero
        "requests_without_tokens": sum(1 for r in ok if r.ttft is None),
        "requests_in_one_chunk": sum(1 for r in ok if r.ttft is not None and r.output_tokens > 1 and r.tpot is None),
        "duration": duration,  # vLLM's key
        "duration_s": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": total_out / duration if duration else 0.0,
        "total_token_throughput": (total_in + total_out) / duration if duration else 0.0,
        # vLLM's: the requests that met every --goodput objective, per second (None without --goodput)
        "request_goodput": (sum(1 for r in ok if meets_slos(r, dict(args.goodput))) / duration if duration else 0.0)
        if args.goodput else None,
    }
    for m in wanted:
        xs = series.get(m, [])
        mean = sum(xs) / len(xs) if xs else None
        out[f"mean_{m}_ms"] = _ms(mean)
        out[f"median_{m}_ms"] = _ms(_percentile(xs, 50))
        out[f"std_{m}_ms"] = _ms(math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) if mean is not None else None)
        for q in pcts:
            out[f"p{q:g}_{m}_ms"] = _ms(_percentile(xs, q))
    return out


async def prefix_cache_counters(client: Any, base: str, headers: dict[str, str]) -> tuple[float, float] | None:
    """(queries, hits) of the server's prefix cache in tokens, from /metrics (pagoda's or vLLM's names)."""
    try:
        r = await client.get(f"{base}/metrics", headers=headers)
    except Exception:
        return None
    if r.status_code != 200:
        return None
    vals = {"queries": 0.0, "hits": 0.0}
    found = False
    for line in r.text.splitlines():
        for prefix in ("pagoda:", "vllm:"):
            for k in vals:
                if line.startswith(f"{prefix}prefix_cache_{k}_total"):
                    try:
                        vals[k] += float(line.rsplit(" ", 1)[1])
                        found = True
                    except (IndexError, ValueError):
                        pass
    return (vals["queries"], vals["hits"]) if found else None


def prefix_ttft_split(results: list[RequestResult], prefix_ids: list[int]) -> dict[str, Any]:
    """TTFT of the requests that were the first sent with their prefix vs those repeating one."""
    seen: set[int] = set()
    first: list[float] = []
    repeat: list[float] = []
    for r, pid in zip(results, prefix_ids, strict=True):
        is_first = pid not in seen
        seen.add(pid)
        if r.ok and r.ttft is not None:
            (first if is_first else repeat).append(r.ttft)
    out: dict[str, Any] = {"num_first_seen_prefix": len(first), "num_repeated_prefix": len(repeat)}
    for name, xs in (("first_seen_prefix", first), ("repeated_prefix", repeat)):
        out[f"mean_ttft_{name}_ms"] = _ms(sum(xs) / len(xs)) if xs else None
        out[f"median_ttft_{name}_ms"] = _ms(_percentile(xs, 50))
    if first and repeat:
        out["ttft_repeated_over_first_seen"] = (out["median_ttft_repeated_prefix_ms"]
                                                / out["median_ttft_first_seen_prefix_ms"])
    return out


def _fmt_ms(v: float | None) -> str:
    """A latency for the table: "n/a" when no request had it; small values keep their digits."""
    if v is None:
        return "n/a"
    return f"{v:.2f}" if v >= 0.01 or v == 0 else f"{v:.3g}"


def print_summary(args: argparse.Namespace, s: dict[str, Any], prompts_exact: bool) -> None:
    line = "=" * 60
    print(line)
    print(f"{' Serving Benchmark Result ':=^60}")
    rows = [
        ("Successful requests:", s["completed"]),
        ("Failed requests:", s["failed"]),
        ("Maximum request concurrency:", args.max_concurrency if args.max_concurrency else "unlimited"),
        ("Request rate (req/s):", args.request_rate),
        ("Benchmark duration (s):", f"{s['duration_s']:.2f}"),
        ("Total input tokens:", f"{s['total_input_tokens']}{'' if prompts_exact else ' (estimated)'}"),
        ("Total generated tokens:", s["total_output_tokens"]),
        ("Request throughput (req/s):", f"{s['request_throughput']:.2f}"),
        *([("Request goodput (req/s):", f"{s['request_goodput']:.2f}")] if s["request_goodput"] is not None else []),
        ("Output token throughput (tok/s):", f"{s['output_throughput']:.2f}"),
        ("Total token throughput (tok/s):", f"{s['total_token_throughput']:.2f}"),
    ]
    if "prefix_cache_hit_rate" in s:
        rows.append(("Prefix cache hit rate (%):", f"{100 * s['prefix_cache_hit_rate']:.2f}"))
    if s["requests_without_tokens"]:
        rows.append(("Requests with no token (no latencies):", s["requests_without_tokens"]))
    if s["requests_in_one_chunk"]:
        rows.append(("Requests with all tokens in 1 chunk (no TPOT):", s["requests_in_one_chunk"]))
    for k, v in rows:
        print(f"{k:<40}{v:>20}")
    if "num_first_seen_prefix" in s:
        print(f"{' TTFT by prefix (first sent vs repeated) ':-^60}")
        for name, label in (("first_seen_prefix", "first-seen"), ("repeated_prefix", "repeated")):
            print(f"{'Median TTFT, ' + label + ' prefix (ms):':<40}{_fmt_ms(s[f'median_ttft_{name}_ms']):>20}")
        if "ttft_repeated_over_first_seen" in s:
            print(f"{'Repeated / first-seen median TTFT:':<40}{s['ttft_repeated_over_first_seen']:>20.3f}")
    names = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
             "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}
    for m in [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]:
        print(f"{' ' + names.get(m, m) + ' ':-^60}")
        for key in [k for k in s if k.endswith(f"_{m}_ms") and not k.startswith("std_")]:
            label = key.replace(f"_{m}_ms", "").replace("_", " ")
            label = {"mean": "Mean", "median": "Median"}.get(label, label.upper() if label.startswith("p") else label)
            print(f"{label + ' ' + m.upper() + ' (ms):':<40}{_fmt_ms(s[key]):>20}")
    _print_load(s)
    print(line)


def _print_load(s: dict[str, Any]) -> None:
    """The streaming-under-load rows (stream_load.py, server_process.py); "n/a" where not measured."""
    def num(v: float | None, fmt: str = ".2f") -> str:
        return "n/a" if v is None else format(v, fmt)

    print(f"{' Streaming under load ':-^60}")
    rows = [
        ("TTFT P50 / P99 (ms):", f"{num(s['ttft_p50_ms'])} / {num(s['ttft_p99_ms'])}"),
        ("TTFT P99 / P50:", num(s["ttft_p99_over_p50"])),
        ("ITL P50 / P99 (ms):", f"{num(s['itl_p50_ms'])} / {num(s['itl_p99_ms'])}"),
        ("ITL P99 / P50:", num(s["itl_p99_over_p50"])),
        ("Median TTFT / median TPOT:", num(s["ttft_p50_over_tpot_p50"])),
        (f"Burst chunks (gap < {s['burst_fraction']:g} TPOT):",
         f"{s['burst_chunks']} of {s['token_chunks']} ({num(_pct(s['burst_chunk_share']), '.1f')}%)"),
        ("Chunks of several tokens:", s["multi_token_chunks"]),
        ("API server CPU ms per output token:", num(s["api_server_cpu_ms_per_output_token"], ".3f")),
        ("Engine core CPU ms per output token:", num(s["engine_core_cpu_ms_per_output_token"], ".3f")),
        ("API server CPU ms per request:", num(s["api_server_cpu_ms_per_request"])),
        ("Load generator CPU share (1 = a core):", num(s["client_cpu_share"])
         + (f" (busiest of {s['num_client_processes']})" if s["num_client_processes"] > 1 else "")),
    ]
    for k, v in rows:
        print(f"{k:<40}{v:>20}")
    if (s["client_cpu_share"] or 0) > 0.8:
        print("warning: the load generator used most of a core: its latencies include its own lag (more "
              "--num-client-processes)", file=sys.stderr)


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _server(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The server's base URL (without ``/v1``) and the request headers (the API key, if any)."""
    base = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    key = args.api_key or os.environ.get("OPENAI_API_KEY") or envs.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(getattr(args, "header", None) or {})  # vLLM: --header overrides the backend's own headers
    return base, headers


async def _run_requests(args: argparse.Namespace, client: Any, url: str, headers: dict[str, str], model: str,
                        chat: bool, prompts: list[tuple[str, int, int]],
                        indices: list[int] | None = None) -> tuple[list[RequestResult], float]:
    """Send every prompt at the request rate (gamma arrivals, ``--burstiness``), at most
    ``--max-concurrency`` at a time; returns the results in prompt order and the wall time. ``indices``: each
    prompt's index in the whole workload (its X-Request-Id; default: its position here)."""
    rng = random.Random(args.seed + 1)
    sem = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    indices = indices if indices is not None else list(range(len(prompts)))

    async def limited(index: int, text: str, n_in: int, n_out: int) -> RequestResult:
        payload = _payload(args, request_model(args, model, index), text, n_out, chat)
        h = {**headers, "X-Request-Id": f"{args.request_id_prefix}{index}"} if args.request_id_prefix else headers
        if sem is None:
            return await send_one(client, url, h, payload, chat, n_in)
        async with sem:
            return await send_one(client, url, h, payload, chat, n_in)

    start = time.perf_counter()
    tasks = []
    for i, (text, n_in, n_out) in enumerate(prompts):
        tasks.append(asyncio.create_task(limited(indices[i], text, n_in, n_out)))
        if math.isfinite(args.request_rate) and i + 1 < len(prompts):
            await asyncio.sleep(arrival_gap(rng, args.request_rate, args.burstiness))
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - start


def arrival_gap(rng: random.Random, rate: float, shape: float) -> float:
    """Seconds before the next request at ``rate`` req/s: gamma with shape ``shape`` and mean 1 / rate (1: Poisson),
    constant 1 / rate when ``shape`` is inf (vLLM's rule)."""
    if math.isinf(shape):
        return 1.0 / rate
    return rng.gammavariate(shape, 1.0 / (rate * shape))


async def _server_model(client: Any, base: str, headers: dict[str, str], model: str | None,
                        ready_timeout: float = 0.0) -> str:
    """``model``, else the first of the server's GET /v1/models; that request also checks the server is there (for
    up to ``ready_timeout`` s, vLLM's ``--ready-check-timeout-sec``): one line naming the URL (and the flags that set
    it) when nothing answers, not a connection traceback."""
    import httpx

    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            r = await client.get(f"{base}/v1/models", headers=headers)
            if r.status_code != 503 or time.monotonic() >= deadline:  # 503: still starting
                break
        except httpx.TransportError as e:
            if time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                continue
            waited = f" within --ready-check-timeout-sec {ready_timeout:g}" if ready_timeout else ""
            raise RuntimeError(f"cannot reach {base}{waited} ({type(e).__name__}: {e or 'no answer'}): is the server "
                               f"running? Set its address with --base-url or --host/--port.") from None
        await asyncio.sleep(0.5)
    if model is not None:
        return model
    if r.status_code != 200:
        raise RuntimeError(f"GET {base}/v1/models answered {r.status_code}: {r.text[:200]!r}"
                           + (" (set the key with --api-key)" if r.status_code == 401 else "")
                           + "; name the model with --model to skip this request.")
    try:
        return str(r.json()["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise RuntimeError(f"GET {base}/v1/models listed no model ({r.text[:200]!r}); name it with --model.") from None


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    base, headers = _server(args)
    chat = args.endpoint.endswith("chat/completions")
    limit = args.max_concurrency or args.num_prompts
    timeout = httpx.Timeout(args.request_timeout, connect=30.0)
    async with httpx.AsyncClient(timeout=timeout, verify=not args.insecure,
                                 limits=httpx.Limits(max_connections=limit + 4,
                                                     max_keepalive_connections=limit + 4)) as client:
        model_id = await _server_model(client, base, headers, args.model, args.ready_check_timeout_sec)
        model = args.served_model_name or model_id  # vLLM: the name in requests, when it is not --model
        counter = _Counter(args, client, base, headers, model)
        prefix_ids: list[int] | None = None
        if args.dataset_name == "prefix_repetition":
            prompts, prefix_ids = await make_prefix_repetition_prompts(args, counter)
            # warm up on a prompt outside the workload: the prefix cache must not hold any of it
            warm_text, warm_n = await words_text(random.Random(args.seed + 99), counter, 16)
        else:
            prompts = await make_prompts(args, counter)
            warm_text, warm_n = prompts[0][0], prompts[0][1]
        url = base + args.endpoint

        # One untimed request checks the set-up (and warms the server).
        first = await send_one(client, url, headers, _payload(args, model, warm_text, min(prompts[0][2], 16), chat),
                               chat, warm_n)
        if not first.ok:
            raise RuntimeError(f"the test request failed: {first.error}")
        if args.num_warmups:
            sem = asyncio.Semaphore(args.max_concurrency or args.num_warmups)

            async def warm(text: str, n_in: int, n_out: int) -> RequestResult:
                async with sem:
                    return await send_one(client, url, headers, _payload(args, model, text, n_out, chat), chat, n_in)

            await asyncio.gather(*(warm(*prompts[i % len(prompts)]) for i in range(args.num_warmups)))
        if args.reset_prefix_cache:
            r = await client.post(f"{base}/reset_prefix_cache", headers=headers)
            if r.status_code != 200:
                print(f"warning: POST /reset_prefix_cache answered {r.status_code}", file=sys.stderr)
        cache_before = await prefix_cache_counters(client, base, headers)
        cpu_before = CpuSnapshot.take(args.server_pid) if args.server_pid else None
        client_cpu = time.process_time()

        client_share: float | None
        if args.num_client_processes > 1:
            from pagoda.benchmarks.client_pool import run_sharded

            results, duration, client_share = await asyncio.to_thread(run_sharded, args, url, headers, model, chat,
                                                                      prompts)
        else:
            results, duration = await _run_requests(args, client, url, headers, model, chat, prompts)
            client_share = (time.process_time() - client_cpu) / duration if duration else None
        cpu_after = CpuSnapshot.take(args.server_pid) if args.server_pid else None
        cache_after = await prefix_cache_counters(client, base, headers)

    summary = summarize(args, results, duration)
    summary.update(load_figures(results, latency_series(results)["itl"], args.burst_fraction))
    summary.update(cpu_report(cpu_before, cpu_after, summary["total_output_tokens"], summary["completed"]))
    # the load generator's own CPU over the run (its busiest process's): near 1 (one core), its clock readings lag
    summary["client_cpu_share"] = client_share
    summary["num_client_processes"] = args.num_client_processes
    if cache_before is not None and cache_after is not None:
        dq, dh = cache_after[0] - cache_before[0], cache_after[1] - cache_before[1]
        summary["prefix_cache_queries"], summary["prefix_cache_hits"] = dq, dh
        summary["prefix_cache_hit_rate"] = dh / dq if dq > 0 else 0.0
    if prefix_ids is not None:
        summary.update(prefix_ttft_split(results, prefix_ids))
    print_summary(args, summary, counter.exact)
    errors = [r.error for r in results if not r.ok]
    if errors:
        print(f"first errors: {errors[:3]}", file=sys.stderr)
    return _result_record(args, base, model, counter.exact, prefix_ids is not None, summary, results, model_id)


def _result_record(args: argparse.Namespace, base: str, model: str, prompts_exact: bool, prefix_repetition: bool,
                   summary: dict[str, Any], results: list[RequestResult], model_id: str | None = None
                   ) -> dict[str, Any]:
    """The saved result: the run's settings, the summary, and the per-request figures (vLLM's keys), then the
    ``--metadata`` pairs (as vLLM, keys of the result)."""
    return {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "label": args.label,
        "base_url": base,
        "endpoint": args.endpoint,
        "backend": args.backend or ("openai-chat" if args.endpoint.endswith("chat/completions") else "openai"),
        "model": model,
        "model_id": model_id or model,  # vLLM's key: --model, else the first listed model
        "tokenizer_id": args.tokenizer,
        "num_prompts": args.num_prompts,
        "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "dataset_name": args.dataset_name,
        "prefix_repetition": ({k: getattr(args, f"prefix_repetition_{k}") for k in
                               ("prefix_len", "suffix_len", "num_prefixes", "output_len")}
                              if prefix_repetition else None),
        "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len,
        "ignore_eos": args.ignore_eos,
        "extra_body": args.extra_body,
        "seed": args.seed,
        "goodput": dict(args.goodput) if args.goodput else None,
        "prompt_lengths_exact": prompts_exact,
        "serve_cmd": args.serve_cmd,
        "server_pid": args.server_pid,
        **summary,
        "input_lens": [r.prompt_len for r in results],
        "output_lens": [r.output_tokens for r in results],
        "ttfts": [r.ttft for r in results],  # seconds; None: no token arrived
        "itls": [r.itl for r in results],
        "tpots": [r.tpot for r in results],
        "e2els": [r.latency for r in results],
        "latencies": [r.latency for r in results],  # vLLM's key (= e2els)
        "generated_texts": [r.text for r in results],
        "errors": [r.error for r in results],  # per request, as vLLM's ("" for a successful one)
        "sent_ats": [r.sent_at for r in results],  # wall clock
        "response_ids": [r.response_id for r in results],
        **(args.metadata or {}),
    }


def run_bench_serve(args: argparse.Namespace) -> dict[str, Any]:
    resolve_args(args)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per request around the report
    if isinstance(args.extra_body, str):
        try:
            args.extra_body = json.loads(args.extra_body)
        except json.JSONDecodeError as e:
            raise ValueError(f"--extra-body is not valid JSON: {e}") from None
        if not isinstance(args.extra_body, dict):
            raise ValueError("--extra-body must be a JSON object.")
    if args.num_prompts < 1:
        raise ValueError("--num-prompts must be at least 1.")
    if args.request_rate <= 0:
        raise ValueError("--request-rate must be positive (or inf).")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError("--max-concurrency must be at least 1.")
    most = min(args.num_prompts, args.max_concurrency or args.num_prompts)
    if not 1 <= args.num_client_processes <= most:
        raise ValueError(f"--num-client-processes must be in [1, {most}] (--num-prompts and --max-concurrency bound "
                         f"it), got {args.num_client_processes}.")
    if args.serve_cmd and args.server_pid:
        raise ValueError("--serve-cmd starts the server whose pid is measured: drop --server-pid.")
    if args.burst_fraction <= 0:
        raise ValueError("--burst-fraction must be positive.")
    server = LaunchedServer(args.serve_cmd, args.serve_log, _server(args)[0]) if args.serve_cmd else None
    if server is not None:  # a SIGTERM (e.g. from `timeout`) must still stop the server below
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if server is not None:
            ready_s = server.wait_ready(_server(args)[0], args.serve_timeout)
            print(f"server ready in {ready_s:.1f} s (pid {server.pid}, log {server.log_path})")
            args.server_pid = server.pid
        result = asyncio.run(bench(args))
    finally:
        if server is not None:
            server.stop()
    if args.save_result or args.append_result:
        path = os.path.join(args.result_dir, args.result_filename or default_result_filename(args, result))
        os.makedirs(args.result_dir, exist_ok=True)
        with open(path, "a+" if args.append_result else "w", encoding="utf-8") as f:
            if args.append_result and f.tell() != 0:
                f.write("\n")  # vLLM's: one JSON document after another
            json.dump(result, f, indent=None if args.append_result else 2)
        print(f"result {'appended' if args.append_result else 'saved'} to {path}")
    return result


def default_result_filename(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """vLLM's name of a saved result: ``LABEL-RATEqps[-concurrencyN]-MODEL-DATE.json``, LABEL being ``--label``,
    else the backend (``openai`` or ``openai-chat``), MODEL the model id's last path part."""
    concurrency = f"-concurrency{args.max_concurrency}" if args.max_concurrency is not None else ""
    label = args.label or result["backend"]
    return f"{label}-{args.request_rate}qps{concurrency}-{result['model_id'].split('/')[-1]}-{result['date']}.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="pagoda bench serve")
    add_bench_serve_args(p)
    run_bench_serve(p.parse_args(argv))



if __name__ == "__main__":
    main()
