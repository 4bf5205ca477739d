"""``pagoda bench throughput``: offline throughput of a seeded workload, optionally vs HF.

All requests are submitted at once (``ignore_eos``, fixed output lengths). Prints
requests/s, output tokens/s and total tokens/s; ``--backend hf|both`` runs the same request
list (same prompts, same per-request output lengths; the results carry its
``requests_digest``) through HF transformers (``hf_peer.py``: ``generate`` in batches of
``--hf-batch-size``, or ``generate_batch`` with ``--hf-impl``), credited with every token
it generated, for a side-by-side ratio in the same run. ``--save-requests`` writes the list
as JSON for a peer run elsewhere (``benchmarks/gpu/hf_peer.py --requests``).

Every pagoda run also reports the prefix-cache hit rate of the timed workload. With
``--dataset prefix_repetition`` (shared prefixes, vLLM's dataset), it measures the time to
first token of a request alone whose prefix is new against one whose prefix is cached
(``--prefix-ttft-probes``), and ``--compare-no-prefix-caching`` runs the same workload
again on an engine with prefix caching off, in the same process, and prints the speed-up.

``--makespan-bound`` reports the run's makespan bound (the larger of the longest request's decode
steps at batch-1 speed and the total work at full-batch speed, measured on the same engine just before
the timed run: :mod:`pagoda.benchmarks.makespan`) and measured / bound. ``--step-timeline PATH``
records every engine step of the timed run (:mod:`pagoda.engine.step_timeline`);
``benchmarks/step_timeline_report.py PATH`` summarizes it. ``--lora-path`` (with ``--enable-lora``) runs every
request with that adapter under an id drawn from 1..``--max-loras`` (vLLM's benchmark).
"""

from __future__ import annotations

import argparse
import json
import time


def add_args(p: argparse.ArgumentParser) -> None:
    from pagoda.benchmarks.latency import add_step_timeline_arg
    from pagoda.entrypoints.cli import add_engine_args

    add_engine_args(p)
    add_dataset_args(p)
    p.add_argument("--save-requests", default=None,
                   help="write the request list (prompt ids, output lengths) as JSON, for a peer run elsewhere")
    p.add_argument("--compare-no-prefix-caching", action="store_true",
                   help="also run the workload on an engine with prefix caching off (same process) and print the "
                        "speed-up of caching")
    p.add_argument("--prefix-ttft-probes", type=int, default=3,
                   help="prefix_repetition: requests timed alone with a new prefix, then again with the same prefix "
                        "and a new suffix (TTFT uncached vs cached); 0 skips")
    p.add_argument("--backend", choices=["pagoda", "vllm", "hf", "both"], default="pagoda",
                   help="engine(s) to run (vllm: vLLM's name of this engine, = pagoda)")
    p.add_argument("--hf-impl", choices=["generate", "generate_batch"], default="generate",
                   help="HF peer: static generate batches, or generate_batch (continuous batching)")
    p.add_argument("--hf-batch-size", "--hf-max-batch-size", dest="hf_batch_size", type=int, default=None,
                   help="HF generate batch size (default: all; --hf-max-batch-size is vLLM's name)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed warm-up batches shaped like the workload (JIT compiles out of the timed run)")
    p.add_argument("--output-json", type=str, default=None, help="write results to this JSON file")
    p.add_argument("--disable-detokenize", action="store_true",
                   help="do not detokenize pagoda's outputs (detokenization left out of the timed run)")
    p.add_argument("--makespan-bound", action="store_true",
                   help="measure batch-1 and full-batch speeds on this engine before the timed run and report the "
                        "run's makespan bound and measured / bound (pagoda/benchmarks/makespan.py)")
    p.add_argument("--makespan-decode-steps", type=int, default=32,
                   help="decode steps timed for each speed of --makespan-bound")
    p.add_argument("--lora-path", default=None,
                   help="a PEFT LoRA adapter folder: each request runs with it, under an id drawn (with --seed) from "
                        "1..--max-loras, so the steps use that many adapter slots (vLLM's bench throughput); needs "
                        "--enable-lora")
    add_step_timeline_arg(p)
    from pagoda.benchmarks.vllm_bench_flags import THROUGHPUT, add_refused_args

    add_refused_args(p, THROUGHPUT)


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    """The flags that define the request list (``datasets.workload_from_args``); ``--seed`` comes
    with the engine flags here and with the peer script's own."""
    from pagoda.arg_utils import positive_int, range_ratio
    from pagoda.benchmarks.datasets import DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN

    p.add_argument("--dataset", "--dataset-name", dest="dataset", choices=["random", "sharegpt", "prefix_repetition"],
                   default="random", help="workload shape")
    p.add_argument("--dataset-path", default=None,
                   help="refused: pagoda's datasets are synthetic (vLLM reads a ShareGPT or custom file here)")
    p.add_argument("--num-prompts", type=positive_int, default=32, help="number of requests")
    # default None: a length given for a dataset that has its own is refused or overrides it (workload_from_args)
    p.add_argument("--input-len", type=positive_int, default=None,
                   help=f"prompt length (random dataset; default {DEFAULT_INPUT_LEN})")
    p.add_argument("--random-input-len", dest="input_len", type=positive_int, default=None,
                   help="vLLM's name of --input-len")
    p.add_argument("--output-len", type=positive_int, default=None,
                   help=f"output length (random dataset, default {DEFAULT_OUTPUT_LEN}; with sharegpt or "
                        "prefix_repetition it replaces the dataset's output lengths, as vLLM's)")
    p.add_argument("--random-output-len", dest="output_len", type=positive_int, default=None,
                   help="vLLM's name of --output-len")
    p.add_argument("--range-ratio", type=range_ratio, default=None,
                   help="lengths drawn from [len*(1-r), len*(1+r)], r in [0, 1) (random dataset; default 0)")
    p.add_argument("--random-range-ratio", dest="range_ratio", type=range_ratio, default=None,
                   help="vLLM's name of --range-ratio")
    add_prefix_repetition_args(p)


def add_prefix_repetition_args(p: argparse.ArgumentParser) -> None:
    """vLLM's flags of the prefix_repetition dataset (shared by bench throughput and bench serve)."""
    g = p.add_argument_group("prefix_repetition dataset")
    g.add_argument("--prefix-repetition-prefix-len", type=int, default=256, help="tokens of each shared prefix")
    g.add_argument("--prefix-repetition-suffix-len", type=int, default=256, help="tokens after the prefix, per request")
    g.add_argument("--prefix-repetition-num-prefixes", type=int, default=10, help="distinct prefixes")
    g.add_argument("--prefix-repetition-output-len", type=int, default=128, help="output tokens per request")


def _report(name: str, reqs, seconds: float, hit_rate: float | None = None,
            generated_tokens: int | None = None) -> dict:
    """One backend's figures; ``generated_tokens`` (a peer's) is what it really generated, when
    that differs from the requested output lengths."""
    from pagoda.benchmarks.datasets import requests_digest

    n_in = sum(len(r.prompt_token_ids) for r in reqs)
    n_out = sum(r.output_len for r in reqs) if generated_tokens is None else generated_tokens
    res = {
        "backend": name,
        "requests_digest": requests_digest(reqs),
        "requested_output_tokens": sum(r.output_len for r in reqs),
        "requests": len(reqs),
        "seconds": round(seconds, 3),
        "requests_per_s": len(reqs) / seconds,
        "output_tokens_per_s": n_out / seconds,
        "total_tokens_per_s": (n_in + n_out) / seconds,
        "prompt_tokens": n_in,
        "output_tokens": n_out,
    }
    hit = ""
    if hit_rate is not None:
        res["prefix_cache_hit_rate"] = hit_rate
        hit = f", prefix cache hit rate {100 * hit_rate:.1f}%"
    print(
        f"[{name}] {len(reqs)} requests in {seconds:.2f} s: {res['requests_per_s']:.2f} req/s, "
        f"{res['output_tokens_per_s']:.1f} output tok/s, {res['total_tokens_per_s']:.1f} total tok/s{hit}"
    )
    return res


WARMUP_REQUESTS = 32


def _warm_up(llm, reqs, loras: list | None = None) -> None:
    """One untimed batch shaped like the workload: up to 32 of its prompt lengths (spread over it), submitted
    together, 8 tokens each, so the kernels a JIT compiles on first use (prefill and mixed batches of these
    sizes) are compiled before the timed run (and ``loras``' adapters, every id of them, read from their folder).
    Token ids are a pattern outside the workload and the prefix cache is reset afterwards: the timed run finds
    none of it cached."""
    from pagoda import SamplingParams

    step = max(1, len(reqs) // WARMUP_REQUESTS)
    lens = [len(r.prompt_token_ids) for r in reqs[::step][:WARMUP_REQUESTS]]
    warm = [{"prompt_token_ids": [7 + (i + j) % 13 for j in range(n)]} for i, n in enumerate(lens)]
    warm_loras = None
    if loras:
        distinct = list({r.lora_int_id: r for r in loras}.values())
        warm_loras = [distinct[i % len(distinct)] for i in range(len(warm))]
        if len(distinct) > len(warm):
            warm_loras += distinct[len(warm):]
            warm += warm[:1] * (len(distinct) - len(warm))
    llm.generate(warm, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False,
                 lora_request=warm_loras)
    llm.reset_prefix_cache()


def lora_requests(args, n: int) -> list | None:
    """``--lora-path``: request i's adapter, the folder under an id drawn from 1..``--max-loras`` (named by the
    id, as vLLM names them), seeded by ``--seed``; None without it."""
    import random

    from pagoda.lora.request import LoRARequest

    if not getattr(args, "lora_path", None):
        return None
    rng = random.Random(args.seed)
    ids = [rng.randint(1, args.max_loras) for _ in range(n)]
    return [LoRARequest(str(i), i, args.lora_path) for i in ids]


def run_pagoda(args, reqs, llm=None, name: str = "pagoda", **engine_overrides) -> dict:
    from pagoda import LLM, SamplingParams
    from pagoda.benchmarks.latency import recording
    from pagoda.benchmarks.makespan import measure_bound
    from pagoda.entrypoints.cli import engine_kwargs

    if llm is None:
        llm = LLM(**{**engine_kwargs(args), **engine_overrides})
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = [SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True,
                             detokenize=not getattr(args, "disable_detokenize", False)) for r in reqs]
    loras = lora_requests(args, len(reqs))
    for _ in range(args.warmup):
        _warm_up(llm, reqs, loras)
    bound = measure_bound(llm.llm_engine, reqs, args.makespan_decode_steps, args.seed) if args.makespan_bound else None
    kv = llm.llm_engine.core.kv
    q0, h0 = kv.prefix_cache_queries, kv.prefix_cache_hits
    with recording(llm.llm_engine.core, args.step_timeline, name):
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False, lora_request=loras)
        dt = time.perf_counter() - t0
    assert all(len(o.outputs[0].token_ids) == r.output_len for o, r in zip(outs, reqs, strict=True))
    q = kv.prefix_cache_queries - q0
    res = _report(name, reqs, dt, (kv.prefix_cache_hits - h0) / q if q else 0.0)
    if bound is not None:
        res["makespan_bound"] = bound.record(dt)
        print(bound.describe(dt))
    if args.dataset == "prefix_repetition" and args.prefix_ttft_probes > 0 and kv.enable_prefix_caching:
        res["prefix_ttft"] = prefix_ttft(llm, args)
    return res


def prefix_ttft(llm, args) -> dict:
    """Time to first token of a request running alone: with a prefix never seen before, then with the
    same prefix (now cached) and a new suffix. Prefix and suffix lengths from the prefix_repetition flags."""
    import random
    import statistics

    from pagoda import SamplingParams

    vocab = int(llm.llm_engine.cfg.hf_config["vocab_size"])
    rng = random.Random(args.seed + 7919)  # not the workload's prefixes
    lo = min(1000, vocab - 1)
    sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)
    plen, slen = args.prefix_repetition_prefix_len, max(1, args.prefix_repetition_suffix_len)

    def ttft(ids: list[int]) -> tuple[float, int]:
        t = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)[0]
        return time.perf_counter() - t, out.num_cached_tokens

    # One untimed pair first: one-time costs of these shapes (kernel compiles, GEMM heuristics)
    # belong to no request's steady-state TTFT.
    warm_prefix = [rng.randint(10, lo) for _ in range(plen)]
    ttft(warm_prefix + [rng.randint(10, lo) for _ in range(slen)])
    ttft(warm_prefix + [rng.randint(10, lo) for _ in range(slen)])
    cold, warm, hit_tokens = [], [], []
    for _ in range(args.prefix_ttft_probes):
        prefix = [rng.randint(10, lo) for _ in range(plen)]
        t_cold, c0 = ttft(prefix + [rng.randint(10, lo) for _ in range(slen)])
        t_warm, c1 = ttft(prefix + [rng.randint(10, lo) for _ in range(slen)])
        assert c0 == 0, "a new prefix was found in the cache"
        cold.append(t_cold)
        warm.append(t_warm)
        hit_tokens.append(c1)
    res = {
        "probes": args.prefix_ttft_probes,
        "prompt_tokens": plen + slen,
        "cached_tokens": min(hit_tokens),
        "ttft_uncached_ms_median": 1000 * statistics.median(cold),
        "ttft_cached_ms_median": 1000 * statistics.median(warm),
        "ttft_uncached_ms": [1000 * t for t in cold],
        "ttft_cached_ms": [1000 * t for t in warm],
    }
    res["cached_over_uncached"] = res["ttft_cached_ms_median"] / res["ttft_uncached_ms_median"]
    print(f"[prefix TTFT] {plen}-token prefix + {slen}-token suffix, alone, median of {len(cold)}: "
          f"uncached {res['ttft_uncached_ms_median']:.1f} ms, cached ({res['cached_tokens']} tokens hit) "
          f"{res['ttft_cached_ms_median']:.1f} ms = {res['cached_over_uncached']:.3f} of uncached")
    return res


def run_hf(args, reqs) -> dict:
    """The HF peer on ``reqs`` (hf_peer.py), credited with every token it generated."""
    from pagoda.benchmarks.hf_peer import (
    cb_attn_implementation,
    load_hf_model,
    run_hf_generate,
    run_hf_generate_batch,
)
    from pagoda.config import EngineArgs

    cfg = EngineArgs(model=args.model, dtype=args.dtype, load_format="dummy" if args.load_format == "dummy" else "auto",
                     device=args.device).create_config()
    cb = args.hf_impl == "generate_batch"
    model = load_hf_model(str(cfg.model_path), cfg.dtype, cfg.device, args.load_format == "dummy",
                          attn=cb_attn_implementation() if cb else None)
    run = run_hf_generate_batch(model, reqs, cfg.device) if cb else run_hf_generate(model, reqs,
                                                                                      args.hf_batch_size, cfg.device)
    res = _report(f"hf-{args.hf_impl}", reqs, run.seconds, generated_tokens=run.generated_tokens)
    if run.generated_tokens != res["requested_output_tokens"]:
        print(f"[hf-{args.hf_impl}] credited {run.generated_tokens} generated tokens for "
              f"{res['requested_output_tokens']} requested (a generate batch runs to its longest request)")
    return res


def _release_cuda_cache() -> None:
    """Hand memory the caching allocator still reserves back to the driver: the next engine sizes
    its KV cache from what the driver reports free."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(args: argparse.Namespace) -> None:
    from pagoda.benchmarks.datasets import requests_digest, save_requests, workload_from_args
    from pagoda.config import EngineArgs

    if args.backend == "vllm":  # vLLM's name of the engine under test
        args.backend = "pagoda"
    if args.lora_path and not args.enable_lora:
        raise SystemExit("bench throughput: --lora-path needs --enable-lora (and --max-loras: the adapter ids "
                         "drawn per request)")
    if args.lora_path and args.backend != "pagoda":
        raise SystemExit(f"bench throughput: --lora-path runs on pagoda only; the HF peer (--backend {args.backend}) "
                         f"applies no adapter")
    cfg_probe = EngineArgs(model=args.model, load_format=args.load_format).create_config()
    reqs = workload_from_args(args, int(cfg_probe.hf_config["vocab_size"]))
    print(f"{len(reqs)} requests, digest {requests_digest(reqs)}")
    if args.save_requests:
        save_requests(args.save_requests, reqs)
    results = []
    if args.step_timeline:
        open(args.step_timeline, "w").close()  # each pagoda run appends its timed run (run label: its name)
    if args.backend in ("pagoda", "both"):
        results.append(run_pagoda(args, reqs))
        if args.compare_no_prefix_caching:
            import gc

            gc.collect()  # the first engine is gone: free its KV cache before the second one allocates
            _release_cuda_cache()
            results.append(run_pagoda(args, reqs, name="pagoda-no-prefix-caching", enable_prefix_caching=False))
            on, off = results[-2], results[-1]
            on["speedup_vs_no_prefix_caching"] = off["seconds"] / on["seconds"]
            print(f"prefix caching on / off: {on['speedup_vs_no_prefix_caching']:.2f}x faster "
                  f"({off['seconds']:.2f} s -> {on['seconds']:.2f} s; hit rate "
                  f"{100 * on['prefix_cache_hit_rate']:.1f}%)")
    if args.backend in ("hf", "both"):
        results.append(run_hf(args, reqs))
    if args.backend == "both":
        ratio = results[0]["output_tokens_per_s"] / results[-1]["output_tokens_per_s"]
        print(f"pagoda / hf output throughput (same requests, same run): {ratio:.2f}x")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({**vllm_keys(results[0]), "args": {k: v for k, v in vars(args).items() if k != "func"},
                       "results": results}, f, indent=2)


def vllm_keys(res: dict) -> dict:
    """vLLM's ``bench throughput --output-json`` figures of one run (``_report``'s record): elapsed seconds,
    requests, prompt + output tokens, and the two rates."""
    total = res["prompt_tokens"] + res["output_tokens"]
    return {"elapsed_time": res["seconds"], "num_requests": res["requests"], "total_num_tokens": total,
            "requests_per_second": res["requests_per_s"], "tokens_per_second": res["total_tokens_per_s"]}
