"""Run a ``pagoda`` CLI command in this process with other GEMV tables (an A/B of table entries end to end).

Usage (GPU machine, repo root): ``python benchmarks/gpu/with_gemv_table.py [--table SWEEP_JSON]
[--cuda-cores-only] [--fp8-table FP8_JSON] [--w4-table W4_JSON] -- bench latency --model M ...``.
``--table``: the winners of ``dense_gemv_sweep.py --json`` replace the bf16 ``GEMV_TABLE``'s entries (and this
card's ``DEVICE_GEMV_TABLE`` ones) of the same ``(rows, N, K)`` and add new ones; ``--entry ROWS,N,K=RULE``
(repeatable, ``RULE`` as ``GemvRule``'s fields, e.g. ``5,4096,14336=64,128,4,1,4,4``): one entry set by hand over
all of that (a shape whose sweep was a tie); ``--cuda-cores-only``: then every
tensor-core rule (``use_dot``) is dropped, so those shapes run cuBLAS; ``--fp8-table``: the winners of
``fp8_linear_bench.py --json`` replace the FP8 GEMV's table entries the same way; ``--w4-table``: the winners of
``int4_gemv_sweep.py --json`` replace the 4-bit ``SMALL_M_TABLE`` and the ``INT4_TABLE`` entries it chose. The
engine must run in this process (``bench latency`` and ``bench throughput`` do; a server's engine core is another
process and would not see the tables).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_entry(text: str) -> tuple[tuple[int, int, int], object]:
    """``ROWS,N,K=BLOCK_N,BLOCK_K,WARPS,USE_DOT,STAGES,SPLIT`` -> a table key and its ``GemvRule``."""
    from pagoda.layers.dense_gemv import GemvRule

    key, _, rule = text.partition("=")
    m, n, k = (int(v) for v in key.split(","))
    bn, bk, w, dot, stages, split = (int(v) for v in rule.split(","))
    return (m, n, k), GemvRule(bn, bk, w, bool(dot), stages, split)


def merged_table(table_json: str | None, cuda_cores_only: bool, entries: list[str] | None = None) -> dict:
    """``GEMV_TABLE`` with this card's own ``DEVICE_GEMV_TABLE`` entries and then the sweep's winners from
    ``table_json`` over it, then (``cuda_cores_only``) without its tensor-core rules. The caller sets the result as
    ``GEMV_TABLE`` and empties ``DEVICE_GEMV_TABLE``, so the sweep's winners are what runs."""
    import torch

    from pagoda.layers import dense_gemv

    table = dict(dense_gemv.GEMV_TABLE)
    if torch.cuda.is_available():
        table.update(dense_gemv.device_rules(torch.cuda.get_device_name()))
    if table_json:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from dense_gemv_sweep import table_from_json

        table.update(table_from_json(table_json))
    table.update(parse_entry(e) for e in entries or [])
    if cuda_cores_only:
        table = {key: rule for key, rule in table.items() if not rule.use_dot}
    return table


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=None)
    ap.add_argument("--cuda-cores-only", action="store_true")
    ap.add_argument("--fp8-table", default=None)
    ap.add_argument("--w4-table", default=None)
    ap.add_argument("--entry", action="append", default=[])
    args = ap.parse_args(argv[:split])
    if args.w4_table:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from int4_gemv_sweep import apply_json_tables

        print(apply_json_tables(args.w4_table), flush=True)
    if args.fp8_table:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from fp8_linear_bench import fp8_table_from_json

        from pagoda.quantization.kernels import triton_fp8_gemv

        triton_fp8_gemv.GEMV_TABLE.update(fp8_table_from_json(args.fp8_table))
        print(f"FP8 GEMV table: {len(triton_fp8_gemv.GEMV_TABLE)} entries", flush=True)
    from pagoda.layers import dense_gemv

    table = dense_gemv.GEMV_TABLE = merged_table(args.table, args.cuda_cores_only, args.entry)
    dense_gemv.DEVICE_GEMV_TABLE = {}  # folded into the table above
    print(f"GEMV table: {len(table)} entries, {sum(r.use_dot for r in table.values())} on tensor cores", flush=True)
    from pagoda.entrypoints.cli import main as cli_main

    cli_main(argv[split + 1:])


if __name__ == "__main__":
    main()
