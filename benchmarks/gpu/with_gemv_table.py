"""Run a ``pagoda`` CLI command in this process with another bf16 GEMV table (an A/B of table entries end to end).

Usage (GPU machine, repo root): ``python benchmarks/gpu/with_gemv_table.py [--table SWEEP_JSON]
[--cuda-cores-only] -- bench latency --model M ...``. ``--table``: the winners of ``dense_gemv_sweep.py --json``
replace ``GEMV_TABLE``'s entries of the same ``(rows, N, K)`` and add new ones; ``--cuda-cores-only``: then every
tensor-core rule (``use_dot``) is dropped, so those shapes run cuBLAS. The engine must run in this process (``bench
latency`` and ``bench throughput`` do; a server's engine core is another process and would not see the table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def merged_table(table_json: str | None, cuda_cores_only: bool) -> dict:
    """``GEMV_TABLE`` with the sweep's winners from ``table_json`` over it, then (``cuda_cores_only``) without its
    tensor-core rules."""
    from pagoda.layers import dense_gemv

    table = dict(dense_gemv.GEMV_TABLE)
    if table_json:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from dense_gemv_sweep import table_from_json

        table.update(table_from_json(table_json))
    if cuda_cores_only:
        table = {key: rule for key, rule in table.items() if not rule.use_dot}
    return table


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=None)
    ap.add_argument("--cuda-cores-only", action="store_true")
    args = ap.parse_args(argv[:split])
    from pagoda.layers import dense_gemv

    table = dense_gemv.GEMV_TABLE = merged_table(args.table, args.cuda_cores_only)
    print(f"GEMV table: {len(table)} entries, {sum(r.use_dot for r in table.values())} on tensor cores", flush=True)
    from pagoda.entrypoints.cli import main as cli_main

    cli_main(argv[split + 1:])


if __name__ == "__main__":
    main()
