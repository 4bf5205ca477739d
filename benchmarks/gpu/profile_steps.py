"""Where a whole engine step's time goes: device kernels and host gaps, for any engine configuration.

Unlike ``profile_decode.py`` (graph replays only), this profiles real ``LLMEngine.step()`` calls, so the
sampler, the rejection sampler, the grammar bitmask and the host work between launches are all in it.

Usage (GPU machine, repository root):
  python benchmarks/gpu/profile_steps.py MODEL_DIR --batch 1 32 [--engine-args JSON] [--structured] [--cprofile]

``--engine-args``: extra EngineArgs as JSON, e.g. '{"speculative_config": {"method": "synthetic",
"num_speculative_tokens": 4}}'. ``--structured``: every request is constrained by a JSON schema.
Prints per batch size: wall time per step, device-busy time per step (sum of kernel times), the
kernels grouped by name (top 16), and the launches per step (``--by-grid``: also by launch grid, which tells the
linear shapes of a GEMV apart). ``--timeline``: also the device timeline of those
steps (kernel start/end times): the idle time between consecutive kernels split into short gaps (at most
``--gap-us``, default 20 µs: launch and dependency latency between back-to-back kernels) and long ones (the
device waiting for the host), per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pagoda import SamplingParams
from pagoda.config import EngineArgs
from pagoda.engine.gc_policy import freeze_startup_heap
from pagoda.engine.llm_engine import LLMEngine
from pagoda.structured_output.params import StructuredOutputsParams
from pagoda.worker.model_runner import StepHandle

SCHEMA = {"type": "object", "properties": {"story": {"type": "string", "minLength": 4000}}, "required": ["story"]}


def _fill(eng: LLMEngine, b: int, tag: str, structured: bool, max_tokens: int) -> list[str]:
    so = StructuredOutputsParams(json=json.dumps(SCHEMA)) if structured else None
    sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=so is None, detokenize=False,
                        structured_outputs=so)  # the schema's minLength keeps a constrained output going
    ids = [f"{tag}-{i}" for i in range(b)]
    for i, rid in enumerate(ids):
        eng.add_request(rid, {"prompt_token_ids": [100 + (i + j) % 500 for j in range(512)]}, sp, final_only=True)
    return ids


def _host_profile(eng: LLMEngine, steps: int) -> None:
    """cProfile of ``steps`` engine steps: the host functions by own time (what the device may wait for), then by
    cumulative time (which engine phase holds it: update, propose, schedule, launch, outputs)."""
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    for _ in range(steps):
        eng.step()
    torch.cuda.synchronize()
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(25)
    pstats.Stats(pr).sort_stats("cumulative").print_stats(40)


class _Phases:
    """Host time per engine phase, by wrapping the phases' methods with wall-clock timers (a few wrappers, unlike
    cProfile's every call), and the exposed host path of a step that completes before the next is launched: from
    the previous step's event wait returning to the next CUDA-graph launch (``--phases``)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.ready: float | None = None
        self.critical: list[float] = []
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, obj: object, name: str, label: str) -> None:
        fn = getattr(obj, name)
        total = self.total

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total[label] += time.perf_counter() - t

        shared = isinstance(obj, (type, types.ModuleType))  # else an instance: its attribute shadows the class's
        self._undo.append((obj, name, obj.__dict__.get(name) if shared else None))
        setattr(obj, name, timed)

    def mark_wait_and_launch(self) -> None:
        phases = self
        sync, replay = torch.cuda.Event.synchronize, torch.cuda.CUDAGraph.replay

        def synchronize(ev):
            t = time.perf_counter()
            sync(ev)
            phases.ready = time.perf_counter()
            phases.total["event wait"] += phases.ready - t

        def launch(g):
            t = time.perf_counter()
            if phases.ready is not None:
                phases.critical.append(t - phases.ready)
                phases.ready = None
            replay(g)
            phases.total["launch: forward: graph replay() call"] += time.perf_counter() - t

        self._undo += [(torch.cuda.Event, "synchronize", sync), (torch.cuda.CUDAGraph, "replay", replay)]
        torch.cuda.Event.synchronize = synchronize  # type: ignore[method-assign]
        torch.cuda.CUDAGraph.replay = launch  # type: ignore[method-assign]

    def restore(self) -> None:
        for obj, name, old in reversed(self._undo):
            if isinstance(obj, (type, types.ModuleType)):
                setattr(obj, name, old)
            else:
                delattr(obj, name)  # the instance attribute shadowed the class's method
        self._undo.clear()


def _resolve(spec: str) -> tuple[object, str]:
    """``module:attr[.attr...]`` → (the object holding the last attribute, its name)."""
    import importlib

    mod, _, path = spec.partition(":")
    obj: object = importlib.import_module(mod)
    *owners, name = path.split(".")
    for o in owners:
        obj = getattr(obj, o)
    return obj, name


def _host_phases(eng: LLMEngine, steps: int, extra: list[str]) -> None:
    """Run ``steps`` engine steps with :class:`_Phases` timers; print µs per step of each phase. ``extra``:
    more functions to time, as ``module:Class.method`` or ``module:function`` (a function is timed where the
    module named holds it: name the module that calls it)."""
    core = eng.core
    ph = _Phases()
    for spec in extra:
        obj, name = _resolve(spec)
        ph.wrap(obj, name, f"[{spec}]")
    for obj, name, label in ((core.scheduler, "update_from_output", "update_from_output"),
                             (core.scheduler, "schedule", "schedule"),
                             (core, "_launch", "launch (all)"), (core, "_outputs", "outputs"),
                             (core.runner, "_prepare", "launch: prepare inputs"),
                             (core.runner, "_forward", "launch: forward (staging + replay)"),
                             (core.runner, "_finish_step", "launch: sampler queued"),
                             (eng.output_processor, "process", "front end")):
        ph.wrap(obj, name, label)
    if core.spec is not None:
        ph.wrap(core.spec, "propose", "propose")
    ph.wrap(StepHandle, "result", "result (wait + lists)")
    ph.mark_wait_and_launch()
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            eng.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    finally:
        ph.restore()
    print(f"  host phases (us per step, wall {wall / steps * 1e6:.0f}):")
    for label, t in sorted(ph.total.items(), key=lambda kv: -kv[1]):
        print(f"    {t / steps * 1e6:8.1f}  {label}")
    if ph.critical:
        c = sorted(ph.critical)
        print(f"    event wait returned -> next graph launch: median {c[len(c) // 2] * 1e6:.1f} us, p90 "
              f"{c[len(c) * 9 // 10] * 1e6:.1f} us over {len(c)} launches (exposed when each step completes before "
              f"the next is launched: speculative steps)")


def _timeline(prof, steps: int, gap_us: float) -> None:
    """Idle time between consecutive kernels on the device (intervals merged), short gaps vs long ones."""
    spans = sorted((ev.time_range.start, ev.time_range.end) for ev in prof.events()
                   if ev.device_type == torch.autograd.DeviceType.CUDA and ev.time_range.end > ev.time_range.start)
    if not spans:
        return
    short = long_ = 0.0
    n_short = n_long = 0
    end = spans[0][1]
    for start, stop in spans[1:]:
        gap = start - end
        if gap > 0:
            if gap <= gap_us:
                short, n_short = short + gap, n_short + 1
            else:
                long_, n_long = long_ + gap, n_long + 1
        end = max(end, stop)
    total = (end - spans[0][0]) / steps / 1000
    print(f"  timeline: {total:.3f} ms/step first kernel to last; idle between kernels: short gaps (<= {gap_us:g} "
          f"us) {short / steps / 1000:.3f} ms/step in {n_short // steps} gaps, long gaps {long_ / steps / 1000:.3f} "
          f"ms/step in {n_long // steps} gaps")


def _by_grid(prof, steps: int) -> None:
    """Kernels grouped by name and launch grid (from the trace's kernel records): which linear shape a GEMV launch
    served, each launch's mean time. Under programmatic dependent launch a kernel's time includes its wait for the
    previous one, so run with ``PAGODA_PDL=0`` for each kernel's own time."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        trace = json.loads(Path(f.name).read_text())
    per: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in trace.get("traceEvents", []):
        if ev.get("cat") == "kernel":
            key = (ev["name"][:60], str(ev.get("args", {}).get("grid")))
            per[key][0] += ev.get("dur", 0.0)
            per[key][1] += 1
    print("  by grid (µs per launch, launches per step):")
    for (name, grid), (t, n) in sorted(per.items(), key=lambda kv: -kv[1][0])[:24]:
        print(f"    {t / n:8.2f} us  {int(n) // steps:4d}x  grid {grid:16s} {name}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--engine-args", default="{}")
    ap.add_argument("--structured", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cprofile", action="store_true", help="also a host profile (cProfile) of the same steps")
    ap.add_argument("--timeline", action="store_true", help="also split the device's idle time (module docstring)")
    ap.add_argument("--phases", action="store_true", help="also host time per engine phase (_Phases)")
    ap.add_argument("--wrap", nargs="*", default=[], help="with --phases: more functions to time, e.g. "
                    "pagoda.worker.verify_graphs:VerifyGraphs.run or pagoda.worker.model_runner:prepare_inputs")
    ap.add_argument("--gap-us", type=float, default=20.0)
    ap.add_argument("--by-grid", action="store_true", help="also kernels by launch grid (_by_grid; PAGODA_PDL=0)")
    ap.add_argument("--w4-table", default=None, help="the 4-bit tables from int4_gemv_sweep.py --json")
    a = ap.parse_args()
    if a.w4_table:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from int4_gemv_sweep import apply_json_tables

        print(apply_json_tables(a.w4_table), flush=True)
    extra = json.loads(a.engine_args)
    eng = LLMEngine.from_engine_args(EngineArgs(model=a.model, load_format="dummy", **{"max_model_len": 4096, **extra}))
    freeze_startup_heap("profile_steps")  # as the engine-core process of `pagoda serve` does (PAGODA_GC_FREEZE)
    for b in a.batch:
        ids = _fill(eng, b, f"b{b}", a.structured, 400)
        core = eng.core
        # Until every request runs and has decoded a few tokens (grammars compiled, prefill done, graphs warm).
        while len(core.scheduler.running) < b or min(r.num_output_tokens for r in core.scheduler.running) < 4:
            eng.step()
        torch.cuda.synchronize()
        if a.cprofile:
            _host_profile(eng, a.steps)
        if a.phases:
            _host_phases(eng, a.steps, a.wrap)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                eng.step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / a.steps
        per: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                per[ev.name[:90]][0] += ev.device_time_total
                per[ev.name[:90]][1] += 1
        busy = sum(v[0] for v in per.values()) / a.steps / 1000
        launches = sum(v[1] for v in per.values()) // a.steps
        print(f"== batch {b}: wall {wall * 1000:.3f} ms/step, device busy {busy:.3f} ms/step "
              f"({busy / (wall * 1000):.0%}), {launches} kernels/step")
        for name, (t, n) in sorted(per.items(), key=lambda kv: -kv[1][0])[:16]:
            print(f"  {t / a.steps / 1000:7.3f} ms  {int(n) // a.steps:4d}x  {name}")
        if a.timeline:
            _timeline(prof, a.steps, a.gap_us)
        if a.by_grid:
            _by_grid(prof, a.steps)
        eng.abort_request(ids)
        while eng.has_unfinished_requests():
            eng.step()


if __name__ == "__main__":
    main()
