"""The default model on the CPU, every peer in one run: pagoda quantized (the GGUF's Q4_1/Q8_0 weights),
pagoda on the dequantized bf16 conversion, llama.cpp on the same .gguf file, HF transformers bf16 (and, as
``hf-fp32``, float32: the faster HF on a CPU without native bf16).

Each backend generates ``--output-len`` greedy tokens (EOS ignored) after the same ``--input-len``-token
prompts (random ids, fixed seed), at batch 1 and batch 32; a figure is output tokens over the
end-to-end time of the batch (prompt processing included, for every backend alike). Backends run
interleaved (round r: A, B, C, D at batch 1, then at batch 32) and each figure is the median over the
rounds, so drift of a shared machine hits every backend alike; ratios are of the medians of this run.

llama.cpp: ``llama_cpp.Llama`` (llama-cpp-python) with ``n_threads`` = torch's thread count, extra buffer types
off (see :func:`_no_extra_buffer_types`); batch 1
through ``Llama.generate(top_k=1)``, batch 32 through the low-level batch API (one ``llama_decode`` per
step with one token of each of the 32 sequences, a unified KV cache). HF: ``model.generate`` on a static
left-padded batch (the prompts are all of one length, so no padding).

One OpenMP policy for all: llama.cpp's CPU backend computes with the system libgomp, which pagoda's native kernels
load too, and the wait policy is read once per process. Under ``OMP_WAIT_POLICY=PASSIVE`` (pagoda's default,
docs/design.md "CPU threads") llama.cpp's per-operation thread hand-offs sleep and wake: its batch 1 measured 38 tok/s
against 130 without it (2026-12-05, benchmarks/RESULTS.md, session 26). So run the bench twice, with and without
the variable, and credit each backend with its better run.

Usage (from the repository root)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/cpu_default_model.py [--rounds 3] [--batch-sizes 1 32]
        [--backends pagoda-q pagoda-bf16 llama.cpp hf hf-fp32] [--output-json FILE]
    python benchmarks/cpu_default_model.py ...          # the same without the variable (llama.cpp's own setting)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

Runner = Callable[[list[list[int]], int], float]
"""(prompts, new tokens per prompt) -> seconds for the whole batch."""


def pagoda_runner(load_format: str) -> Runner:
    from pagoda import SamplingParams
    from pagoda.config import EngineArgs
    from pagoda.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_engine_args(EngineArgs(load_format=load_format, dtype="bfloat16", max_num_seqs=64))
    count = [0]

    def run(prompts: list[list[int]], new: int) -> float:
        sp = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True, detokenize=False)
        t0 = time.perf_counter()
        for p in prompts:
            count[0] += 1
            engine.add_request(f"r{count[0]}", {"prompt_token_ids": p}, sp, final_only=True)
        while engine.has_unfinished_requests():
            engine.step()
        return time.perf_counter() - t0

    return run


def hf_runner(folder: Path, dtype: torch.dtype = torch.bfloat16) -> Runner:
    from pagoda.benchmarks.datasets import BenchRequest
    from pagoda.benchmarks.hf_peer import load_hf_model, run_hf_generate

    model = load_hf_model(str(folder), dtype, torch.device("cpu"), dummy=False)

    def run(prompts: list[list[int]], new: int) -> float:
        reqs = [BenchRequest(p, new) for p in prompts]
        res = run_hf_generate(model, reqs, len(reqs), torch.device("cpu"))
        assert res.generated_tokens == len(prompts) * new
        return res.seconds

    return run


def _no_extra_buffer_types(low: Any) -> None:
    """llama.cpp's "extra buffer types" (AMX and repacked weights) off: this llama-cpp-python 0.3.36 build's
    AMX path dies with a general protection fault at ``ldtilecfg`` (in ``ggml_backend_amx_mul_mat``) on the
    dev VM, with or without an ``arch_prctl`` request for the tile state; the plain CPU path runs."""
    default = low.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params


def llama_cpp_runner(gguf: Path, max_batch: int, ctx_per_seq: int) -> Runner:
    import llama_cpp
    import llama_cpp.llama_cpp as low

    _no_extra_buffer_types(low)
    threads = torch.get_num_threads()
    llm = llama_cpp.Llama(str(gguf), n_ctx=ctx_per_seq, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    batched = _LlamaBatched(llama_cpp, llm, max_batch, ctx_per_seq, threads) if max_batch > 1 else None

    def run(prompts: list[list[int]], new: int) -> float:
        if len(prompts) > 1:
            assert batched is not None
            return batched.run(prompts, new)
        t0 = time.perf_counter()
        n = 0
        for _ in llm.generate(prompts[0], top_k=1, temp=0.0, reset=True):
            n += 1
            if n == new:
                break
        return time.perf_counter() - t0

    return run


class _LlamaBatched:
    """Greedy decoding of several sequences at once through llama.cpp's batch API (one context)."""

    def __init__(self, lc: Any, llm: Any, n_seq: int, ctx_per_seq: int, threads: int) -> None:
        self.lc = lc
        params = lc.llama_context_default_params()
        params.n_ctx = n_seq * ctx_per_seq
        params.n_batch = params.n_ubatch = max(512, n_seq)
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True
        self.ctx = lc.llama_init_from_model(llm._model.model, params)
        self.n_vocab = llm.n_vocab()
        self.cap = params.n_batch
        self.batch = lc.llama_batch_init(self.cap, 0, n_seq)

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for start in range(0, len(items), self.cap):
            chunk = items[start : start + self.cap]
            for i, (tok, pos, seq, want) in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
                b.seq_id[i][0], b.logits[i] = seq, int(want)
            b.n_tokens = len(chunk)
            if self.lc.llama_decode(self.ctx, b) != 0:
                raise RuntimeError("llama_decode failed")

    def _argmax(self, i: int) -> int:
        ptr = self.lc.llama_get_logits_ith(self.ctx, i)
        arr = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
        return int(arr.argmax())

    def run(self, prompts: list[list[int]], new: int) -> float:
        lc = self.lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        t0 = time.perf_counter()
        toks: list[int] = []
        for s, p in enumerate(prompts):  # prompt by prompt (each fits one batch): its last token's logits
            self._decode([(t, j, s, j == len(p) - 1) for j, t in enumerate(p)])
            toks.append(self._argmax(len(p) - 1))
        pos = [len(p) for p in prompts]
        for _ in range(new - 1):
            self._decode([(t, pos[s], s, True) for s, t in enumerate(toks)])
            toks = [self._argmax(s) for s in range(len(prompts))]
            pos = [x + 1 for x in pos]
        return time.perf_counter() - t0


def _prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(10, 1000) for _ in range(length)] for _ in range(n)]


def _model_files() -> tuple[Path, Path]:
    from pagoda.models.model_files import ensure_default_model, gguf_source

    folder = ensure_default_model(progress=False)
    gguf = gguf_source(folder)
    if gguf is None:
        raise SystemExit(f"{folder} keeps no .gguf file (the default model's folder should)")
    return folder, gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--backends", nargs="+", default=["pagoda-q", "pagoda-bf16", "llama.cpp", "hf"])
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    folder, gguf = _model_files()
    make: dict[str, Callable[[], Runner]] = {
        "pagoda-q": lambda: pagoda_runner("auto"),
        "pagoda-bf16": lambda: pagoda_runner("safetensors"),
        "llama.cpp": lambda: llama_cpp_runner(gguf, max(args.batch_sizes), args.input_len + args.output_len + 8),
        "hf": lambda: hf_runner(folder),
        "hf-fp32": lambda: hf_runner(folder, torch.float32),  # the stronger HF peer on a CPU without native bf16
    }
    runners = {name: make[name]() for name in args.backends}
    print(f"model {gguf.name}; torch threads {torch.get_num_threads()}; {args.input_len} in, {args.output_len} out")
    results: dict[str, dict[int, list[float]]] = {n: {b: [] for b in args.batch_sizes} for n in runners}
    for run in runners.values():  # warm-up: one short batch of each size
        for b in args.batch_sizes:
            run(_prompts(b, args.input_len, 999), 4)
    for r in range(args.rounds):
        for b in args.batch_sizes:
            prompts = _prompts(b, args.input_len, r)
            for name, run in runners.items():
                tps = b * args.output_len / run(prompts, args.output_len)
                results[name][b].append(tps)
                print(f"round {r} batch {b:3d} {name:12s} {tps:8.1f} tok/s", flush=True)
    _report(results, args)


def _report(results: dict[str, dict[int, list[float]]], args: argparse.Namespace) -> None:
    med = {n: {b: statistics.median(v) for b, v in per.items()} for n, per in results.items()}
    for b in args.batch_sizes:
        line = ", ".join(f"{n} {med[n][b]:.1f}" for n in med)
        print(f"batch {b}: median output tok/s over {args.rounds} rounds: {line}")
        for peer in ("llama.cpp", "hf", "hf-fp32", "pagoda-bf16"):
            if peer in med and "pagoda-q" in med:
                print(f"  pagoda-q / {peer}: {med['pagoda-q'][b] / med[peer][b]:.2f}x")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"args": vars(args), "tok_s": results, "median": med},
                                                     indent=2))


if __name__ == "__main__":
    main()
