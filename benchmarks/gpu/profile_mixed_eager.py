"""Host time of mixed steps (a new prompt beside many running decodes) on each forward path, and what in them
waits for the device.

Why: at 256 streams with a 2,048-token budget (RESULTS.md, session 21) the steps above the largest mixed-graph
bucket (512 tokens) ran eagerly and spent 20-55 ms of host time in ``step()`` with ~0.2 ms waiting for the
device's result: either their launches are that slow or something in them synchronizes with the step in flight.

What: an engine (dummy weights) with ``--batch`` requests decoding; then for each ``--prompt`` length, ``--steps``
steps each of which admits one new request of that many tokens (so every step is mixed: ``batch + prompt`` tokens,
eager above the largest mixed bucket, the mixed graph below). Per prompt length it prints the step timeline's host
time (``step()`` less its wait for the device), the wait and the path; ``--sync-debug`` prints the stack of each
distinct call that synchronizes with the device inside those steps (``torch.cuda.set_sync_debug_mode("warn")``);
``--cprofile`` the top functions by own time.

Usage (GPU machine, repo root): ``python benchmarks/gpu/profile_mixed_eager.py MODEL --batch 256 --prompt 200 600
1200 --budget 2048 --sync-debug --cprofile``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import traceback
import warnings

import torch

from pagoda import SamplingParams
from pagoda.config import EngineArgs
from pagoda.engine.gc_policy import freeze_startup_heap
from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine.step_timeline import StepTimeline, read_timeline


def _prompt(n: int, salt: int) -> dict:
    return {"prompt_token_ids": [100 + (salt * 7919 + j) % 20000 for j in range(n)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt", type=int, nargs="+", default=[200, 600, 1200])
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--engine-args", default="{}", help="more EngineArgs as JSON")
    ap.add_argument("--sync-debug", action="store_true")
    ap.add_argument("--cprofile", action="store_true")
    a = ap.parse_args()
    import json

    eng = LLMEngine.from_engine_args(EngineArgs(
        model=a.model, load_format="dummy", max_model_len=4096, max_num_batched_tokens=a.budget,
        max_num_seqs=a.batch + 8, **json.loads(a.engine_args)))
    freeze_startup_heap("profile_mixed_eager")
    long = SamplingParams(temperature=0, max_tokens=3000, ignore_eos=True, detokenize=False)
    short = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True, detokenize=False)
    for i in range(a.batch):
        eng.add_request(f"d{i}", _prompt(64, i), long, final_only=True)
    core = eng.core
    while len(core.scheduler.running) < a.batch or min(r.num_output_tokens for r in core.scheduler.running) < 2:
        eng.step()
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    salt = 10_000
    seen: dict[str, int] = {}

    def show(message, category, filename, lineno, file=None, line=None):  # one stack per distinct call site
        stack = "".join(traceback.format_stack(limit=14)[:-2])
        key = stack.splitlines()[-2] if stack else str(message)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 1:
            print(f"  SYNC: {message}\n{stack}")

    for p in a.prompt:
        for _ in range(3):  # warm: compiles of this step shape happen here
            salt += 1
            eng.add_request(f"w{salt}", _prompt(p, salt), short, final_only=True)
            eng.step()
        torch.cuda.synchronize()
        core.step_timeline = StepTimeline(path, run=f"prompt{p}")
        prof = cProfile.Profile() if a.cprofile else None
        old_show = warnings.showwarning
        if a.sync_debug:
            seen.clear()
            warnings.showwarning = show
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        if prof is not None:
            prof.enable()
        try:
            for _ in range(a.steps):
                salt += 1
                eng.add_request(f"n{salt}", _prompt(p, salt), short, final_only=True)
                eng.step()
        finally:
            if prof is not None:
                prof.disable()
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = old_show
            warnings.resetwarnings()
            core.step_timeline.close()
            core.step_timeline = None
        torch.cuda.synchronize()
        recs = [r for r in read_timeline(path) if r["num_reqs"]]
        host = [(r["t1"] - r["t0"] - r["wait_s"]) * 1e3 for r in recs]
        wait = [r["wait_s"] * 1e3 for r in recs]
        paths = {r["path"] for r in recs}
        tokens = statistics.median(r["prefill_tokens"] + r["decode_tokens"] for r in recs)
        print(f"== prompt {p}: {len(recs)} steps of ~{tokens:.0f} tokens on {sorted(paths)}: host p50 "
              f"{statistics.median(host):.2f} ms (max {max(host):.2f}), wait p50 {statistics.median(wait):.2f} ms; "
              f"sync call sites: {len(seen) if a.sync_debug else 'not checked'}")
        if a.sync_debug:
            for k, n in sorted(seen.items(), key=lambda kv: -kv[1]):
                print(f"    {n:5d}x {k.strip()}")
        if prof is not None:
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    os.unlink(path)


if __name__ == "__main__":
    main()
