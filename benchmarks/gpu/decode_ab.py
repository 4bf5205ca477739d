"""A/B of one GPU switch on a dense model's decode step: decode-graph replay and engine step, switch on then off.

Usage (GPU machine, repo root): ``python benchmarks/gpu/decode_ab.py MODEL_DIR --switch dense-gemv
[--gemv-table JSON] [--batch 1 4] [--rounds 2]``. Dummy bf16 weights, 64-token prompts (``moe_bench.py``'s
``start_batch`` and ``time_graph_and_steps``); each arm is a new engine, since the switches are read at
CUDA-graph capture; arms alternate ``--rounds`` times. Floor: the weight bytes a step reads (every parameter but
the input embedding, whose one row per token is negligible, unless tied to the LM head) plus the KV cache read,
over the copy bandwidth measured here.

Switches: ``dense-gemv`` (``pagoda.layers.dense_gemv.ENABLED``; its table from ``--gemv-table``, the JSON of
``dense_gemv_sweep.py --json``), ``fused-qk-norm`` (``pagoda.models.llama.FUSED_QK_NORM``), ``short-split-tiles``
(``pagoda.attention.triton_kernels.SHORT_SPLIT_TILES``: 32-key tiles in the split-KV decode kernel on short splits),
``pdl`` (``pagoda.layers.pdl.ENABLED``: programmatic dependent launch of the decode chain's Triton kernels),
``argmax`` (``pagoda.layers.argmax.ENABLED``: the greedy argmax by two Triton launches instead of torch's),
``fused-split-combine`` (``pagoda.attention.triton_kernels.FUSED_SPLIT_COMBINE``: the split-KV decode's last split
combines the partials, instead of a second kernel), ``unsplit-decode``
(``pagoda.attention.triton_kernels.UNSPLIT_DECODE_KERNEL``: large decode batches on the decode kernel with one split
instead of the unified kernel),
``gemv-table`` (on: ``GEMV_TABLE`` as in the code; off: the table of ``--gemv-table``, e.g. a previous one written as
sweep JSON: an A/B of two tables).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moe_bench import (  # noqa: E402
    PROMPT_LEN,
    copy_bandwidth,
    kv_bytes,
    release_engine,
    start_batch,
    time_graph_and_steps,
)

SWITCHES = ("dense-gemv", "fused-qk-norm", "short-split-tiles", "pdl", "argmax", "gemv-table", "fused-split-combine",
            "unsplit-decode")


def switch_target(name: str) -> tuple[object, str]:
    from pagoda.attention import triton_kernels
    from pagoda.layers import argmax, dense_gemv, pdl
    from pagoda.models import llama

    return {"dense-gemv": (dense_gemv, "ENABLED"), "fused-qk-norm": (llama, "FUSED_QK_NORM"),
            "short-split-tiles": (triton_kernels, "SHORT_SPLIT_TILES"), "pdl": (pdl, "ENABLED"),
            "argmax": (argmax, "ENABLED"), "fused-split-combine": (triton_kernels, "FUSED_SPLIT_COMBINE"),
            "unsplit-decode": (triton_kernels, "UNSPLIT_DECODE_KERNEL")}[name]


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = getattr(getattr(model, "model", model), "embed_tokens", None)
    lm_head = getattr(model, "lm_head", None)
    tied = emb is not None and lm_head is not None and getattr(lm_head, "weight", None) is emb.weight
    if emb is not None and not tied:
        total -= emb.weight.numel() * emb.weight.element_size()
    return total


def run_arm(model_dir: str, batches: list[int], bw: float, label: str) -> dict[int, tuple[float, float, float]]:
    from pagoda.config import EngineArgs
    from pagoda.engine.llm_engine import LLMEngine

    eng = LLMEngine.from_engine_args(EngineArgs(model=model_dir, load_format="dummy", dtype="bfloat16",
                                                max_model_len=1024, max_num_seqs=max(batches)))
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    wbytes = weight_bytes_per_step(eng.core.runner.model)
    out = {}
    for b in batches:
        start_batch(eng, f"{label}{b}", b)
        replay, step = time_graph_and_steps(eng, b)
        floor_ms = (wbytes + kv_bytes(cfg, b, PROMPT_LEN + 30)) / bw * 1e3
        out[b] = (replay, step, floor_ms)
        print(f"[{label}] batch {b}: decode graph {replay:.3f} ms ({replay / floor_ms:.3f}x floor), engine step "
              f"{step:.3f} ms; floor {floor_ms:.3f} ms", flush=True)
        eng.abort_request([f"{label}{b}-{i}" for i in range(b)])
    release_engine(eng)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--switch", required=True, choices=SWITCHES)
    ap.add_argument("--gemv-table", default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from pagoda.layers import dense_gemv

    code_table, json_table = dense_gemv.GEMV_TABLE, None
    if args.gemv_table:
        from dense_gemv_sweep import table_from_json

        json_table = table_from_json(args.gemv_table)
    if args.switch == "gemv-table" and json_table is None:
        ap.error("--switch gemv-table needs --gemv-table (the table of the off arm)")

    def set_arm(on: bool) -> None:
        """gemv-table: the code's table on, --gemv-table's off; another switch: its flag (over --gemv-table's table
        when given)."""
        if args.switch == "gemv-table":
            dense_gemv.GEMV_TABLE = code_table if on else json_table
            return
        if json_table is not None:
            dense_gemv.GEMV_TABLE = json_table
        module, attr = switch_target(args.switch)
        setattr(module, attr, on)

    bw = copy_bandwidth()
    print(f"copy bandwidth (read+write): {bw / 1e9:.0f} GB/s on {torch.cuda.get_device_name()}")
    arms: dict[bool, list[dict]] = {True: [], False: []}
    for r in range(args.rounds):
        for on in (True, False):
            set_arm(on)
            arms[on].append(run_arm(args.model, args.batch, bw, f"{args.switch}-{'on' if on else 'off'}-r{r}"))
    set_arm(True)
    for b in args.batch:
        on = statistics.median(a[b][0] for a in arms[True])
        off = statistics.median(a[b][0] for a in arms[False])
        floor = arms[True][0][b][2]
        print(f"[{args.switch}] batch {b}: graph on {on:.3f} ms ({on / floor:.3f}x floor), off {off:.3f} ms "
              f"({off / floor:.3f}x), on/off {on / off:.3f}")


if __name__ == "__main__":
    main()
