"""Where a CPU verify step's time goes: a plain decode step (1 row) against an n-gram verify step (k + 1 rows) of
the default model, batch 1, greedy, the input-grounded prompts (``benchmarks/data/input_grounded.jsonl``).

Timers (wall clock and the process's CPU time, all threads; other processes on a shared machine do not count in
the latter) wrap, without changing the engine: the int-weight linears (by kernel row count), the attention
backend's forward, the LM head (``compute_logits``), the whole model forward, the runner's ``_sample`` (the
rejection sampler for a verify), the n-gram ``propose``, and the engine step. Steps are classed by their row
count (1 = decode, k + 1 = verify; prefills are left out); the two engines run interleaved prompt by prompt.
Prints ms per step of each class for each part, and what a verify step costs over a decode step. torch is
imported before pagoda here, so pagoda's OpenMP wait policy (``pagoda/worker/cpu_threads.py``: PASSIVE) does not
apply and torch's threads spin between ops, unlike in ``spec_decode_cpu_bench.py``: this measures the compute.

``--phases``: the native decoder stack is built with its phase clocks (``cpu_decoder_stack.PHASE_CLOCKS``) and the
report adds, per step class, the wall microseconds of each phase summed over the layers (norms, each 4-bit matmul,
rotary + KV write, attention, SiLU*up, residual adds).

Usage (repository root): PYTHONPATH=. python benchmarks/spec_cpu_profile.py [--num-prompts 3] [--max-tokens 96]
    [--speculative-config JSON] [--phases]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "input_grounded.jsonl"
NGRAM = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 5}'
PREFILL = 10**6
"""The row-count class of every step of more than 8 rows (prompt chunks)."""
PARTS = ["int4 linears", "LM head", "attention", "model other", "sample", "propose", "engine other", "step"]


class _Clock:
    """Wall and process-CPU seconds of the parts of the current step, charged to the step's row count."""

    def __init__(self) -> None:
        self.step: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.rows = 0
        self.sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
        self.count: dict[int, int] = defaultdict(int)

    def wrap(self, obj, name: str, part: str, rows_arg: int | None = None) -> None:
        fn = getattr(obj, name)
        clk = self

        def timed(*a, **kw):
            if rows_arg is not None:
                clk.rows = a[rows_arg].shape[0]
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                acc = clk.step[part]
                acc[0] += time.perf_counter() - w0
                acc[1] += time.process_time() - c0

        setattr(obj, name, timed)

    def close_step(self) -> None:
        if self.rows > 8:
            self.rows = PREFILL
        if self.rows:
            self.count[self.rows] += 1
            for part, (w, c) in self.step.items():
                self.sums[self.rows][part][0] += w
                self.sums[self.rows][part][1] += c
        self.step.clear()
        self.rows = 0


def _instrument(llm, clk: _Clock) -> None:
    import pagoda.quantization.gguf as gguf

    core = llm.llm_engine.core
    runner, model = core.runner, core.runner.model
    clk.wrap(gguf, "int_weight_linear", "int4 linears")
    clk.wrap(runner.backend, "forward", "attention")
    clk.wrap(model, "compute_logits", "LM head")
    clk.wrap(model, "forward", "model", rows_arg=0)
    clk.wrap(runner, "_sample", "sample")
    if getattr(core, "spec", None) is not None:
        clk.wrap(core.spec, "propose", "propose")
    step = core.step

    def timed_step(*a, **kw):
        w0, c0 = time.perf_counter(), time.process_time()
        out = step(*a, **kw)
        acc = clk.step["step"]
        acc[0] += time.perf_counter() - w0
        acc[1] += time.process_time() - c0
        clk.close_step()
        return out

    core.step = timed_step


def _report(name: str, clk: _Clock) -> dict[int, dict[str, tuple[float, float]]]:
    out = {}
    for rows in sorted(clk.count):
        n = clk.count[rows]
        s = clk.sums[rows]
        per = {p: (w / n * 1e3, c / n * 1e3) for p, (w, c) in s.items()}
        model, step = per.get("model", (0.0, 0.0)), per.get("step", (0.0, 0.0))
        inner = [per.get(p, (0.0, 0.0)) for p in ("int4 linears", "attention")]
        per["model other"] = tuple(model[i] - sum(x[i] for x in inner) for i in (0, 1))  # type: ignore[assignment]
        outer = [model, per.get("LM head", (0.0, 0.0)), per.get("sample", (0.0, 0.0)), per.get("propose", (0.0, 0.0))]
        per["engine other"] = tuple(step[i] - sum(x[i] for x in outer) for i in (0, 1))  # type: ignore[assignment]
        out[rows] = per
        print(f"{name} steps of {'> 8' if rows == PREFILL else rows} row(s): {n}")
        for p in PARTS:
            if p in per:
                print(f"  {p:14s} wall {per[p][0]:7.2f} ms  cpu {per[p][1]:7.2f} ms")
    return out


class _Phases:
    """The decoder stack's phase clocks (µs summed over layers) per (engine, step rows)."""

    def __init__(self) -> None:
        from pagoda.models import cpu_decoder_stack as cds

        self.cds = cds
        self.engine = ""
        self.sums: dict[tuple[str, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.count: dict[tuple[str, int], int] = defaultdict(int)
        run = cds.DecoderStack.run
        me = self

        def timed(stack, h, *a, **kw):
            cds.phase_ns(reset=True)
            out = run(stack, h, *a, **kw)
            got = cds.phase_ns(reset=True)
            if out is not None and got is not None:
                key = (me.engine, h.shape[0])
                me.count[key] += 1
                for phase, ns in got.items():
                    me.sums[key][phase] += ns / 1e3

        cds.DecoderStack.run = timed  # type: ignore[method-assign]

    def report(self) -> None:
        keys = sorted(k for k in self.count if k[1] <= 8)
        heads = " | ".join(f"{e or 'warm-up'} {r} row(s)" for e, r in keys)
        print(f"decoder stack phases, us per step (summed over layers): {heads}")
        for phase in [*self.cds.PHASES, "all"]:
            vals = [sum(self.sums[k].values()) if phase == "all" else self.sums[k][phase] for k in keys]
            print(f"  {phase:10s} " + " | ".join(f"{v / self.count[k]:9.1f}" for v, k in zip(vals, keys, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-prompts", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--speculative-config", default=NGRAM)
    ap.add_argument("--phases", action="store_true", help="the decoder stack's phase clocks (module docstring)")
    args = ap.parse_args()
    phases = None
    if args.phases:
        from pagoda.models import cpu_decoder_stack

        cpu_decoder_stack.PHASE_CLOCKS = True
        phases = _Phases()
    from pagoda import LLM, SamplingParams

    convs = [json.loads(line)["messages"] for line in DATA.read_text().splitlines() if line.strip()]
    convs = convs[: args.num_prompts]
    common = dict(enable_prefix_caching=False, max_model_len=2048)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    llms = {"base": LLM(**common), "spec": LLM(**common, speculative_config=json.loads(args.speculative_config))}
    clocks = {name: _Clock() for name in llms}
    for name, llm in llms.items():
        llm.chat(convs[0], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
        _instrument(llm, clocks[name])
    for i, c in enumerate(convs):
        for name in (("base", "spec") if i % 2 == 0 else ("spec", "base")):
            if phases is not None:
                phases.engine = name
            llms[name].chat(c, params, use_tqdm=False)
    base = _report("base", clocks["base"]).get(1, {})
    spec = _report("spec", clocks["spec"])
    k1 = json.loads(args.speculative_config)["num_speculative_tokens"] + 1
    if base and k1 in spec:
        print(f"verify-{k1 - 1} step / decode step (wall, cpu):")
        for p in PARTS:
            b, s = base.get(p), spec[k1].get(p)
            if b and s and b[0] > 0:
                print(f"  {p:14s} {s[0] / b[0]:5.2f}x  {s[1] / max(b[1], 1e-9):5.2f}x   (+{s[0] - b[0]:.2f} ms wall)")
    if phases is not None:
        phases.report()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
