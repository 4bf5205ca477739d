"""Host time of one constrained decode step, by part, against an unconstrained one: batch 64, async scheduling,
on the CPU with a tiny random Llama (hidden 64, 2 layers, dummy weights) whose vocabulary is the 8B shape's
(128,256 logits) and whose tokenizer is the default model's (SmolLM2, 49,152 tokens; the grammar's token
tables are realistic), so the forward is nearly free and what is left is the host work that decides the GPU's
step time once the device no longer waits for the grammar (issue 14's batch-64 figure: a split constrained step,
see :mod:`pagoda.engine.core`).

Every part is the calling thread's CPU time (``time.thread_time``: other processes on a shared machine do not
count; torch runs on this thread only) spent in the engine's own methods (wrapped, no code change), each part
counting its own time only (a wrapped call inside another is charged to its own part):

* ``schedule`` (``Scheduler.schedule``), ``launch`` (``EngineCore._launch``: prepare inputs, the forward's host
  work; unconstrained, also the sampling launch), ``result`` (``StepHandle.result``), ``update``
  (``Scheduler.update_from_output``), ``outputs`` (``EngineCore._outputs``);
* ``advance``: ``EngineCore._advance_grammars``, less ``accept`` (``RequestGrammar.accept_tokens``: the matchers
  accept the kept tokens);
* ``bitmask``: ``StructuredOutputManager.grammar_bitmask`` (buffer, loop, copy), less ``fill``
  (``RequestGrammar.fill_bitmask``: the matchers' fills);
* ``apply``: ``apply_token_bitmask``'s host work; ``sample rest``: the rest of ``ModelRunner._sample``;
* ``core other``: the rest of ``EngineCore.step`` (split launch, sampling queued, the runner's step bookkeeping);
  ``front end``: the rest of ``LLMEngine.step``; ``total host``: the sum.

Excluded (device work on a GPU, where the graph computes the logits and the unconstrained argmax): the tiny
model's forward, its LM head (``[logits]``, 64 x 128,256 on the CPU), every ``argmax`` (``[argmax]``), and the
masking itself (``[apply kernel]``: xgrammar's kernel and the -inf of the logits columns past the grammar's
vocabulary). Not visible on the CPU: the GPU path's ``.float()`` of the graph's logits and the bitmask's
host-to-device copy (a few kernel launches), and any host synchronisation (a copy from pageable memory waits for
the forward in flight: the bitmask is pinned, see pagoda/structured_output/step_bitmask.py).

Schemas: ``long`` (the GPU bench's ``{"story": string minLength 4000}``, benchmarks/structured_outputs.py) and
``nested`` (an object with nested objects, enums, integers and arrays; :data:`NESTED_SCHEMA`). Each request has
its own prompt; a step is measured only while every request runs (the script checks it).

Usage (repository root; without ``--tokenizer``, the default model's, fetched into pagoda's cache if need be):
    PYTHONPATH=. python benchmarks/structured_host_overhead.py [--batch 64] [--steps 60] [--reps 3]
        [--schemas long nested] [--tokenizer DIR]
Prints host ms per step per part (the median over ``reps`` interleaved runs) and each arm's ratio to the
unconstrained total.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from host_timers import Timers  # noqa: E402
from structured_outputs import LONG_SCHEMA, shape_model  # noqa: E402

NESTED_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "address": {"type": "object", "properties": {
            "street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"},
            "country": {"enum": ["US", "FR", "DE", "JP"]}}, "required": ["street", "city", "zip", "country"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "scores": {"type": "array", "items": {"type": "integer"}},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "address", "tags", "scores", "active"],
}
SCHEMAS = {"long": LONG_SCHEMA, "nested": NESTED_SCHEMA}

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "vocab_size": 128256, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "float32",
}

PARTS = ["schedule", "launch", "result", "update", "advance", "accept", "outputs", "bitmask", "fill", "apply",
         "sample rest", "core other", "front end", "total host", "[apply kernel]", "[argmax]", "[logits]"]


def _instrument(eng, tm: Timers) -> None:
    import xgrammar as xgr

    import pagoda.layers.sampler as sampler
    import pagoda.structured_output.bitmask as bitmask
    import pagoda.structured_output.manager as mgr
    import pagoda.worker.model_runner as mr

    core, runner = eng.core, eng.core.runner
    tm.wrap(eng, "step", "front end")
    tm.wrap(core, "step", "core other")
    tm.wrap(core.scheduler, "schedule", "schedule")
    tm.wrap(core, "_launch", "launch")
    tm.wrap(core.scheduler, "update_from_output", "update")
    tm.wrap(core, "_advance_grammars", "advance")
    tm.wrap(core, "_outputs", "outputs")
    tm.wrap(core.structured, "grammar_bitmask", "bitmask")
    tm.wrap(runner, "_sample", "sample rest")
    tm.wrap(runner.model, "forward", "[model]")
    tm.wrap(runner.model, "compute_logits", "[logits]")
    # Class / module level (put back by Timers.restore).
    tm.wrap(mr.StepHandle, "result", "result")
    tm.wrap(mgr.RequestGrammar, "fill_bitmask", "fill")
    tm.wrap(mgr.RequestGrammar, "accept_tokens", "accept")
    for mod in (sampler, mr):  # wherever the step's sampling calls it from
        if hasattr(mod, "apply_token_bitmask"):
            tm.wrap(mod, "apply_token_bitmask", "apply")
    tm.wrap(xgr, "apply_token_bitmask_inplace", "[apply kernel]")
    if hasattr(bitmask, "mask_columns_past"):  # logits columns past the grammar's vocabulary
        tm.wrap(bitmask, "mask_columns_past", "[apply kernel]")
    tm.wrap(torch.Tensor, "argmax", "[argmax]")


def _parts(t: dict[str, float], steps: int) -> dict[str, float]:
    out = {p: t.get(p, 0.0) * 1000 / steps for p in PARTS}
    out["total host"] = sum(v for p, v in out.items() if not p.startswith("["))
    return out


def run_once(model: str, batch: int, steps: int, schema: dict | None) -> dict[str, float]:
    from pagoda import SamplingParams
    from pagoda.config import EngineArgs
    from pagoda.engine.llm_engine import LLMEngine
    from pagoda.structured_output import StructuredOutputsParams

    eng = LLMEngine.from_engine_args(EngineArgs(model=model, load_format="dummy", dtype="float32", max_model_len=2048,
                                                max_num_seqs=batch, async_scheduling=True))
    so = StructuredOutputsParams(json=schema) if schema is not None else None
    sp = SamplingParams(temperature=0, max_tokens=steps + 40, ignore_eos=so is None, structured_outputs=so,
                        detokenize=False)
    for i in range(batch):
        eng.add_request(f"r{i}", {"prompt_token_ids": [3 + (7 * i + j) % 5000 for j in range(32)]}, sp,
                        final_only=True)
    for _ in range(200):  # compile, prefill, the first decode steps
        eng.step()
        if len(eng.core.scheduler.running) == batch and eng.core.num_steps_ahead >= 8:
            break
    tm = Timers(exclusive=True)
    _instrument(eng, tm)
    try:
        for _ in range(steps):
            eng.step()
    finally:
        tm.restore()
    running = len(eng.core.scheduler.running)
    eng.shutdown()
    if running != batch:
        raise RuntimeError(f"{running} requests running after the measured steps, expected {batch}")
    return _parts(tm.t, steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--schemas", nargs="+", default=list(SCHEMAS), choices=list(SCHEMAS))
    ap.add_argument("--tokenizer", default=None, help="a folder with tokenizer.json & co (default: the default "
                                                      "model's)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = Path(tempfile.mkdtemp(prefix="pagoda-so-host-")) / "config.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    if a.tokenizer is None:
        from pagoda.models.model_files import ensure_default_model

        a.tokenizer = str(ensure_default_model())
    model = shape_model(str(cfg), a.tokenizer)
    arms: dict[str, dict | None] = {"plain": None, **{s: SCHEMAS[s] for s in a.schemas}}
    res: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    for _ in range(a.reps):  # interleaved: the VM is shared
        for arm, schema in arms.items():
            res[arm].append(run_once(model, a.batch, a.steps, schema))
    print(f"== batch {a.batch}, async scheduling: host ms per step (median of {a.reps}, {a.steps} steps each; "
          f"[...]: device work on a GPU, excluded from the total)")
    print(f"  {'part':<16}" + "".join(f"{m:>12}" for m in res))
    med = {arm: {p: statistics.median(r[p] for r in runs) for p in PARTS} for arm, runs in res.items()}
    for p in PARTS:
        print(f"  {p:<16}" + "".join(f"{med[arm][p]:12.3f}" for arm in res))
    base = med["plain"]["total host"]
    print("  total / plain   " + "".join(f"{med[arm]['total host'] / base:12.2f}" for arm in res))


if __name__ == "__main__":
    main()
