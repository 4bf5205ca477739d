"""Speculative decoding on an input-grounded workload: tokens/s with and without it, same run.

The workload (``benchmarks/data/input_grounded.jsonl``) asks to repeat, edit or summarise a
given passage or code block, through the model's chat template. Batch 1: each prompt runs alone,
greedy, on an engine without speculation and on one with ``--speculative-config`` (n-gram by
default: k = 4, lookup 2..5, the best of the settings measured in RESULTS.md "session 4"), the two
interleaved prompt by prompt and the order swapped every repetition (the machine is shared: only the
same-run ratio counts). Prefix caching is off on both so every run computes its prompt. Reports generated
tokens / second for each, the ratio, the mean acceptance
length, and whether the greedy outputs are identical (else the first diverging position); also the same ratio in
the process's CPU time (``speedup_cpu_time``: other processes on a shared machine do not count) and each arm's
CPU time over wall time (how many cores it got).

``--structured``: the JSON workload instead (``benchmarks/data/input_grounded_json.jsonl``): each prompt asks
for the facts of a passage as a JSON object and carries its schema, sent as ``structured_outputs`` (the
answers are constrained on both engines; every one that finished is checked against its schema).

``--speculative-config`` given several times: one speculating engine per config, all interleaved with the base
in the same run (the order reversed every repetition); the first config's figures are the top-level keys, every
config's are under ``arms``. For example n-gram against suffix decoding:
``--speculative-config '{"method": "ngram", "num_speculative_tokens": 6, "prompt_lookup_min": 2, "prompt_lookup_max":
5}' --speculative-config '{"method": "suffix", "num_speculative_tokens": 8, "suffix_decoding_max_spec_factor": 2,
"suffix_decoding_max_cached_requests": 0}'``: with earlier requests' outputs kept (suffix decoding's default) the
repetitions' second pass would draft each answer from the first's, so the input-grounded figure sets 0.

Usage: python benchmarks/spec_decode_cpu_bench.py [--model M] [--max-tokens 128] [--reps 2] [--structured]
       [--speculative-config JSON ...] [--num-prompts N] [--output-json F] [--gpu-memory-utilization 0.4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).parent / "data" / "input_grounded.jsonl"
DATA_JSON = Path(__file__).parent / "data" / "input_grounded_json.jsonl"
NGRAM = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 5}'


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--num-prompts", type=int, default=None)
    ap.add_argument("--speculative-config", action="append", default=None,
                    help=f"a speculating engine's config (repeatable; default {NGRAM})")
    ap.add_argument("--structured", action="store_true", help="the JSON workload, each answer constrained")
    ap.add_argument("--output-json", default=None)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None,
                    help="per engine, on a GPU (two engines share it: e.g. 0.4)")
    ap.add_argument("--max-model-len", type=int, default=2048)
    args = ap.parse_args(argv)

    from pagoda import LLM, SamplingParams
    from pagoda.structured_output import StructuredOutputsParams

    rows = [json.loads(line) for line in (DATA_JSON if args.structured else DATA).read_text().splitlines()
            if line.strip()][: args.num_prompts]
    convs = [r["messages"] for r in rows]
    params = [SamplingParams(temperature=0.0, max_tokens=args.max_tokens, structured_outputs=(
        StructuredOutputsParams(json=json.dumps(r["schema"])) if args.structured else None)) for r in rows]
    common = dict(model=args.model, dtype=args.dtype, enable_prefix_caching=False, max_model_len=args.max_model_len)
    if args.gpu_memory_utilization is not None:
        common["gpu_memory_utilization"] = args.gpu_memory_utilization
    configs = [json.loads(c) for c in (args.speculative_config or [NGRAM])]
    arms = [f"spec{i}" if i else "spec" for i in range(len(configs))]
    engines = {"base": LLM(**common)}
    engines.update({a: LLM(**common, speculative_config=c) for a, c in zip(arms, configs, strict=True)})
    for llm in engines.values():  # warm-up (compiles the first schema and builds the grammar tables)
        llm.chat(convs[0], params[0], use_tqdm=False)
    warm_stats = {a: _spec_counts(engines[a]) for a in arms}
    secs = dict.fromkeys(engines, 0.0)
    cpu = dict.fromkeys(engines, 0.0)  # the process's CPU time (all threads; other processes do not count)
    toks = dict.fromkeys(engines, 0)
    outs: dict[str, list[list[int]]] = {k: [] for k in engines}
    invalid: list[int] = []  # structured: answers that finished but do not fit their schema
    runs = args.reps * len(convs)
    order = list(engines)
    for rep in range(args.reps):
        for i, (conv, p) in enumerate(zip(convs, params, strict=True)):
            for name in (order if rep % 2 == 0 else order[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                o = engines[name].chat(conv, p, use_tqdm=False)[0].outputs[0]
                secs[name] += time.perf_counter() - t0
                cpu[name] += time.process_time() - c0
                toks[name] += len(o.token_ids)
                if rep == 0:
                    outs[name].append(list(o.token_ids))
                    if args.structured and o.finish_reason == "stop" and not _fits(o.text, rows[i]["schema"]):
                        invalid.append(i)

    def arm(a: str, cfg: dict) -> dict:
        st = engines[a].llm_engine.core.scheduler.spec_stats
        drafts0, acc0 = warm_stats[a]
        diverged = [(i, next((j for j, (u, v) in enumerate(zip(x, y, strict=False)) if u != v), min(len(x), len(y))))
                    for i, (x, y) in enumerate(zip(outs["base"], outs[a], strict=True)) if x != y]
        return {
            "tok_s_spec": toks[a] / secs[a], "speedup": (toks[a] / secs[a]) / (toks["base"] / secs["base"]),
            "speedup_cpu_time": (toks[a] / cpu[a]) / (toks["base"] / cpu["base"]),
            "mean_acceptance_length": st.mean_acceptance_length,
            "draft_acceptance_rate": st.num_accepted_tokens / max(1, st.num_draft_tokens),
            # decode steps without speculation over decode steps with it (the first token of each run comes from
            # its prefill): the speed-up if a verify step cost what a decode step costs and prefills were free
            "step_ratio": (toks[a] - runs) / (toks[a] - runs - (st.num_accepted_tokens - acc0)),
            "verify_steps": st.num_drafts - drafts0,
            "identical": not diverged, "diverged_at": diverged, "speculative_config": cfg,
        }

    per_arm = [arm(a, c) for a, c in zip(arms, configs, strict=True)]
    res = {
        "tok_s_base": toks["base"] / secs["base"], **per_arm[0],
        "cpu_per_wall": {k: cpu[k] / secs[k] for k in engines},
        "tokens": toks, "prompts": len(convs), "reps": args.reps,
        "workload": DATA_JSON.name if args.structured else DATA.name, "invalid_answers": invalid,
        "arms": per_arm,
    }
    print(json.dumps(res, indent=2))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(res, indent=2))
    return res


def _spec_counts(llm) -> tuple[int, int]:
    st = llm.llm_engine.core.scheduler.spec_stats
    return st.num_drafts, st.num_accepted_tokens


def _fits(text: str, schema: dict) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


if __name__ == "__main__":
    main()
