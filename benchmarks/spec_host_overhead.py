"""Host time of one engine step, by part: a speculative verify step (synthetic proposer, k drafts per
request every step) against a plain synchronous decode step, on the CPU with a tiny random Llama
(tests/tiny_models.py, context 2048) whose forward is nearly free, so what is left is the Python/torch host
work that sits on the GPU's critical path when the engine speculates (speculation runs every step to
completion before the next is scheduled).

Every part is timed inclusively (the thread's CPU time, ``time.thread_time``: other processes on a shared
machine do not count; torch is set to one thread) around the engine's own methods (no code change):

* ``schedule``: ``Scheduler.schedule``;
* ``launch``: ``EngineCore._launch`` = block ids + ``execute_async``, of which ``prepare_inputs``,
  ``block tables`` (the persistent cache), ``forward host`` (the eager forward's tensor building; the model
  itself is excluded, see below) and ``sample launch`` (``_sample``: the rejection sampler for a verify);
* ``result``: ``StepHandle.result`` (the host copy of the sampled tokens and their per-request split);
* ``update``: ``Scheduler.update_from_output`` (tokens appended, rejected positions rolled back);
* ``propose``: ``SpecDecoder.propose``; ``outputs``: the rest of ``EngineCore._complete``;
* ``front end``: ``LLMEngine.step`` less ``EngineCore.step`` (output processor, detokenizer off).

``model`` and ``logits`` (the tiny model's forward and LM head, the graph replay on a GPU) are subtracted
from every part that contains it (the argmax over the logits rows stays in ``sample launch``: on a GPU it
is in the graph). ``verify graph staging``: ``VerifyGraphs.run``'s host work (the pinned staging of a
verify step's inputs), which only the CUDA path runs, timed separately with the replay stubbed out.

``critical path``: from entering ``StepHandle.result`` to entering the next step's ``_forward`` -- on a GPU,
the host work between "the device finished step N" and "step N+1's graph is launched", which the device
waits for when steps do not overlap (speculating, they never do). Columns: plain decode and verify-k with
``async_scheduling=False``, and verify-k with ``async_scheduling=True`` (the default on CUDA).
Not visible on the CPU: a host synchronisation (``.item()``, ``torch.tensor(..., device=cuda)``) that makes
the host wait for the device before the step's last kernel is launched.

Usage (repository root): PYTHONPATH=. python benchmarks/spec_host_overhead.py [--batch 1 32] [--k 4]
    [--steps 200] [--reps 3]
Prints ms per step per part for each batch size and mode, the median over ``reps`` interleaved runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_timers import Timers, clock  # noqa: E402

# The calling thread's CPU time: a shared VM's other processes do not count (torch runs on this thread only).

PARTS = ["schedule", "launch", "prepare_inputs", "block tables", "forward host", "sample launch",
         "finish_step", "block ids+mask", "result",
         "update", "propose", "outputs", "front end", "total host", "critical path"]


def _time_critical_path(runner, handle_cls, t: dict[str, float]) -> None:
    """``critical path``: from entering ``StepHandle.result`` (on a GPU: the device has just finished the
    step) to entering the next step's ``_forward`` (its graph replay): the host work the device waits for
    when steps do not overlap."""
    since: list[float] = []
    result, forward = handle_cls.result, runner._forward

    def timed_result(self):
        if not since:
            since.append(clock())
        return result(self)

    def timed_forward(*a, **kw):
        if since:
            t["critical path"] += clock() - since.pop()
        return forward(*a, **kw)

    handle_cls.result = timed_result
    runner._forward = timed_forward


def _instrument(eng, tm: Timers) -> None:
    import pagoda.worker.model_runner as mr

    core, runner = eng.core, eng.core.runner
    tm.wrap(eng, "step", "engine.step")
    tm.wrap(core, "step", "core.step")
    tm.wrap(core.scheduler, "schedule", "schedule")
    tm.wrap(core, "_launch", "launch")
    tm.wrap(runner, "_block_table_rows", "block tables")
    tm.wrap(runner, "_forward", "forward")
    tm.wrap(runner, "_sample", "sample launch")
    tm.wrap(runner, "_finish_step", "finish_step")
    tm.wrap(core.kv, "get_block_ids", "block ids")
    tm.wrap(core.structured, "grammar_bitmask", "bitmask")
    tm.wrap(core.scheduler, "update_from_output", "update")
    tm.wrap(core, "_complete", "complete")
    if hasattr(core, "_outputs"):  # the outputs built on their own (possibly after the next launch)
        tm.wrap(core, "_outputs", "outputs")
    if core.spec is not None:
        tm.wrap(core.spec, "propose", "propose")
    tm.wrap(runner.model, "forward", "model")
    for name in ("compute_logits", "compute_logits_raw"):
        if hasattr(runner.model, name):
            tm.wrap(runner.model, name, "logits")
    # Module/class level: restored by _restore.
    tm.wrap(mr, "prepare_inputs", "prepare_inputs")
    tm.wrap(mr.StepHandle, "result", "result")
    _time_critical_path(runner, mr.StepHandle, tm.t)


def _restore(saved) -> None:
    import pagoda.worker.model_runner as mr

    mr.prepare_inputs, mr.StepHandle.result = saved


def _parts(t: dict[str, float], steps: int) -> dict[str, float]:
    ms = {k: v * 1000 / steps for k, v in t.items()}
    model, logits = ms.get("model", 0.0), ms.get("logits", 0.0)
    out = {
        "schedule": ms["schedule"],
        "launch": ms["launch"] - model - logits,
        "prepare_inputs": ms["prepare_inputs"],
        "block tables": ms["block tables"],
        "forward host": ms["forward"] - model,
        "sample launch": ms["sample launch"] - logits,
        "finish_step": ms["finish_step"] - ms["sample launch"],
        "block ids+mask": ms["block ids"] + ms["bitmask"],
        "result": ms["result"],
        "update": ms["update"],
        "propose": ms.setdefault("propose", 0.0),
        "outputs": ms["outputs"] if "outputs" in ms else ms["complete"] - ms["result"] - ms["update"] - ms["propose"],
        "front end": ms["engine.step"] - ms["core.step"],
        "total host": ms["engine.step"] - model - logits,
        "critical path": ms["critical path"],
    }
    return out


def run_once(model: str, b: int, k: int, steps: int, async_scheduling: bool = False) -> dict[str, float]:
    import pagoda.worker.model_runner as mr
    from pagoda import SamplingParams
    from pagoda.config import EngineArgs
    from pagoda.engine.llm_engine import LLMEngine

    extra = {"speculative_config": {"method": "synthetic", "num_speculative_tokens": k}} if k else {}
    eng = LLMEngine.from_engine_args(EngineArgs(model=model, max_model_len=2048, max_num_seqs=max(b, 1),
                                                async_scheduling=async_scheduling, **extra))
    # Enough tokens that no request ends within the measured steps, even if every draft is accepted.
    sp = SamplingParams(temperature=0, max_tokens=(steps + 20) * (k + 1), ignore_eos=True, detokenize=False)
    for i in range(b):
        eng.add_request(f"r{i}", {"prompt_token_ids": [3 + (i + j) % 300 for j in range(64)]}, sp, final_only=True)
    for _ in range(10):  # prefill, then the first decode/verify steps
        eng.step()
    saved = (mr.prepare_inputs, mr.StepHandle.result)
    tm = Timers()
    _instrument(eng, tm)
    try:
        for _ in range(steps):
            eng.step()
    finally:
        _restore(saved)
    running = len(eng.core.scheduler.running)
    if running != b:
        raise RuntimeError(f"{running} requests running, expected {b}")
    return _parts(tm.t, steps)


def staging_ms(model: str, b: int, k: int, n: int = 2000) -> float:
    """``VerifyGraphs.run`` host work per call (replay stubbed): b requests of k + 1 rows."""
    from pagoda.config import EngineArgs
    from pagoda.engine.llm_engine import LLMEngine
    from pagoda.worker.verify_graphs import VerifyGraphs

    eng = LLMEngine.from_engine_args(EngineArgs(model=model, max_model_len=2048, max_num_seqs=max(b, 1)))
    r = eng.core.runner
    q = k + 1
    vg = VerifyGraphs(r.model, r.backend, r.kv_caches, r.block_size, 2048, [1, 2, 4, 8, 16, 24, 32], q,
                      torch.device("cpu"), use_graphs=False)
    for s in vg.sizes:
        vg.graphs[s] = _NoReplay()
        vg.outputs[s] = torch.zeros(s * q, 8)
    ids = list(range(b * q))
    pos = [600 + i for i in range(b * q)]
    slots = [1000 + i for i in range(b * q)]
    rows = torch.zeros(b, vg.max_blocks, dtype=torch.int32).numpy()
    t0 = clock()
    for _ in range(n):
        vg.run(ids, pos, slots, [q] * b, [605] * b, rows)
    return (clock() - t0) * 1000 / n


class _NoReplay:
    def replay(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    from tiny_models import build_long_context_model

    torch.set_num_threads(1)
    model = str(build_long_context_model(Path(tempfile.mkdtemp()) / "llama", 2048))
    for b in a.batch:
        res: dict[str, list[dict[str, float]]] = {"plain": [], f"verify-{a.k}": [], f"v-{a.k} async": []}
        for _ in range(a.reps):  # interleaved: the VM is shared
            res["plain"].append(run_once(model, b, 0, a.steps))
            res[f"verify-{a.k}"].append(run_once(model, b, a.k, a.steps))
            res[f"v-{a.k} async"].append(run_once(model, b, a.k, a.steps, async_scheduling=True))
        print(f"== batch {b}: host ms per step (median of {a.reps}; model forward excluded)")
        print(f"  {'part':<16}" + "".join(f"{m:>12}" for m in res))
        for p in PARTS:
            print(f"  {p:<16}" + "".join(f"{statistics.median(r[p] for r in runs):12.3f}" for runs in res.values()))
        print(f"  verify graph staging (CUDA path only): {staging_ms(model, b, a.k):.3f} ms")


if __name__ == "__main__":
    main()
