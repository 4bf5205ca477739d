"""``pagoda bench throughput``: offline throughput of a seeded workload, optionally vs HF.

All requests are submitted at once (``ignore_eos``, fixed output lengths). Prints
requests/s, output tokens/s and total tokens/s; ``--backend hf`` runs the same token
ids through HF transformers ``generate`` in batches of ``--hf-batch-size`` for a
side-by-side ratio.

Every pagoda run also reports the prefix-cache hit rate of the timed workload. With
``--dataset prefix_repetition`` (shared prefixes, vLLM's dataset), it measures the time to
first token of a request alone whose prefix is new against one whose prefix is cached
(``--prefix-ttft-probes``), and ``--compare-no-prefix-caching`` runs the same workload
again on an engine with prefix caching off, in the same process, and prints the speed-up.
"""

from __future__ import annotations

import argparse
import json
import time


def add_args(p: argparse.ArgumentParser) -> None:
    from pagoda.entrypoints.cli import add_engine_args

    add_engine_args(p)
    p.add_argument("--dataset", "--dataset-name", dest="dataset", choices=["random", "sharegpt", "prefix_repetition"],
                   default="random", help="workload shape")
    p.add_argument("--num-prompts", type=int, default=32, help="number of requests")
    p.add_argument("--input-len", type=int, default=56, help="prompt length (random dataset)")
    p.add_argument("--output-len", type=int, default=128, help="output length (random dataset)")
    p.add_argument("--range-ratio", type=float, default=0.0, help="lengths drawn from [len*(1-r), len*(1+r)]")
    add_prefix_repetition_args(p)
    p.add_argument("--compare-no-prefix-caching", action="store_true",
                   help="also run the workload on an engine with prefix caching off (same process) and print the "
                        "speed-up of caching")
    p.add_argument("--prefix-ttft-probes", type=int, default=3,
                   help="prefix_repetition: requests timed alone with a new prefix, then again with the same prefix "
                        "and a new suffix (TTFT uncached vs cached); 0 skips")
    p.add_argument("--backend", choices=["pagoda", "hf", "both"], default="pagoda", help="engine(s) to run")
    p.add_argument("--hf-batch-size", type=int, default=None, help="HF generate batch size (default: all)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up iterations (small, untimed)")
    p.add_argument("--output-json", type=str, default=None, help="write results to this JSON file")


def add_prefix_repetition_args(p: argparse.ArgumentParser) -> None:
    """vLLM's flags of the prefix_repetition dataset (shared by bench throughput and bench serve)."""
    g = p.add_argument_group("prefix_repetition dataset")
    g.add_argument("--prefix-repetition-prefix-len", type=int, default=256, help="tokens of each shared prefix")
    g.add_argument("--prefix-repetition-suffix-len", type=int, default=256, help="tokens after the prefix, per request")
    g.add_argument("--prefix-repetition-num-prefixes", type=int, default=10, help="distinct prefixes")
    g.add_argument("--prefix-repetition-output-len", type=int, default=128, help="output tokens per request")


def _workload(args, vocab_size: int):
    from pagoda.benchmarks.datasets import prefix_repetition_requests, random_requests, sharegpt_like_requests

    if args.dataset == "sharegpt":
        return sharegpt_like_requests(args.num_prompts, vocab_size, args.seed)
    if args.dataset == "prefix_repetition":
        return prefix_repetition_requests(
            args.num_prompts, args.prefix_repetition_prefix_len, args.prefix_repetition_suffix_len,
            args.prefix_repetition_num_prefixes, args.prefix_repetition_output_len, vocab_size, args.seed)
    r = args.range_ratio

    def rng(n: int) -> tuple[int, int]:
        return max(1, int(n * (1 - r))), max(1, int(n * (1 + r)))

    return random_requests(args.num_prompts, rng(args.input_len), rng(args.output_len), vocab_size, args.seed)


def _report(name: str, reqs, seconds: float, hit_rate: float | None = None) -> dict:
    n_in = sum(len(r.prompt_token_ids) for r in reqs)
    n_out = sum(r.output_len for r in reqs)
    res = {
        "backend": name,
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


def run_pagoda(args, reqs, llm=None, name: str = "pagoda", **engine_overrides) -> dict:
    from pagoda import LLM, SamplingParams
    from pagoda.entrypoints.cli import engine_kwargs

    if llm is None:
        llm = LLM(**{**engine_kwargs(args), **engine_overrides})
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = [SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True, detokenize=True) for r in reqs]
    if args.warmup:
        # Warm up on prompts outside the workload, so the prefix cache holds none of it.
        warm = [{"prompt_token_ids": [7 + i] * 24} for i in range(2)]
        llm.generate(warm, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    kv = llm.llm_engine.core.kv
    q0, h0 = kv.prefix_cache_queries, kv.prefix_cache_hits
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    assert all(len(o.outputs[0].token_ids) == r.output_len for o, r in zip(outs, reqs, strict=True))
    q = kv.prefix_cache_queries - q0
    res = _report(name, reqs, dt, (kv.prefix_cache_hits - h0) / q if q else 0.0)
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
    import torch
    from transformers import AutoModelForCausalLM

    from pagoda.config import EngineArgs

    cfg = EngineArgs(model=args.model, dtype=args.dtype, load_format="dummy" if args.load_format == "dummy" else "auto",
                     device=args.device).create_config()
    if args.load_format == "dummy":
        from transformers import AutoConfig

        hf_cfg = AutoConfig.from_pretrained(str(cfg.model_path))
        with torch.device(cfg.device):
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=cfg.dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(cfg.model_path), dtype=cfg.dtype).to(cfg.device)
    model.eval()
    bsz = args.hf_batch_size or len(reqs)
    pad = 0
    t_total = 0.0
    with torch.inference_mode():
        # warm-up
        model.generate(torch.tensor([reqs[0].prompt_token_ids], device=cfg.device), max_new_tokens=2, do_sample=False,
                       pad_token_id=pad)
        for i in range(0, len(reqs), bsz):
            chunk = reqs[i : i + bsz]
            L = max(len(r.prompt_token_ids) for r in chunk)
            ids = torch.full((len(chunk), L), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for j, r in enumerate(chunk):  # left padding
                ids[j, L - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
                mask[j, L - len(r.prompt_token_ids) :] = 1
            new = max(r.output_len for r in chunk)
            t0 = time.perf_counter()
            model.generate(ids.to(cfg.device), attention_mask=mask.to(cfg.device), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=pad)
            if cfg.device.type == "cuda":
                torch.cuda.synchronize()
            t_total += time.perf_counter() - t0
    return _report("hf", reqs, t_total)


def _release_cuda_cache() -> None:
    """Hand memory the caching allocator still reserves back to the driver: the next engine sizes
    its KV cache from what the driver reports free."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(args: argparse.Namespace) -> None:
    from pagoda.config import EngineArgs

    cfg_probe = EngineArgs(model=args.model, load_format=args.load_format).create_config()
    reqs = _workload(args, int(cfg_probe.hf_config["vocab_size"]))
    results = []
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
        print(f"pagoda / hf output throughput: {ratio:.2f}x")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "func"}, "results": results}, f, indent=2)
