"""Run a ``pagoda`` CLI command (or a script) in this process with module constants set: an A/B switch end to end.

Usage (GPU machine, repo root): ``python benchmarks/gpu/with_module_values.py MODULE.NAME=VALUE ... -- bench latency
--model M ...`` (or ``-- --script PATH ARGS...`` to run a Python script instead of the CLI). ``VALUE`` is a Python
literal (``ast.literal_eval``), e.g. ``pagoda.worker.graph_capture.SPLIT_FRACTION=0``. The engine must run in this
process (``bench latency``, ``bench throughput`` and ``benchmarks/gpu/profile_steps.py`` do). The switches join the
key of the start-up's Triton variant manifest (``jit_precompile.KEY_EXTRAS``): without that, a switched run took the
other side's manifest and compiled its own kernels in the timed run (session 33).
"""

from __future__ import annotations

import ast
import importlib
import runpy
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    from pagoda.worker import jit_precompile

    jit_precompile.KEY_EXTRAS.extend(argv[:split])  # the switched run gets its own Triton variant manifest
    for item in argv[:split]:
        target, _, value = item.partition("=")
        module, _, name = target.rpartition(".")
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            raise SystemExit(f"{module} has no {name}")
        setattr(mod, name, ast.literal_eval(value))
        print(f"{target} = {getattr(mod, name)!r}", flush=True)
    rest = argv[split + 1:]
    if rest[:1] == ["--script"]:
        sys.argv = rest[1:]
        runpy.run_path(rest[1], run_name="__main__")
        return
    from pagoda.entrypoints.cli import main as cli_main

    cli_main(rest)


if __name__ == "__main__":
    main()
