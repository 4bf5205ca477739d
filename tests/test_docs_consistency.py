"""The user-facing docs against the code they describe: every flag in the flag tables of docs/serving.md and
the README is a ``pagoda serve`` option, the Endpoints table of docs/serving.md is exactly the server's routes
(and the README's endpoint list names only routes), and the Metrics table of docs/serving.md names exactly the
metrics ``/metrics`` exports, under their exposed names (a counter with its ``_total``).

(The tables that code generates, docs/cli.md's engine flags, vLLM flags and environment variables, are kept
equal to it by tests/server/test_serve_flags.py; docs/models.md by tests/test_transformers_fallback.py.)
"""

from __future__ import annotations

import argparse
import fnmatch
import re
from pathlib import Path

from pagoda.entrypoints.openai.cli_args import add_serve_args
from pagoda.entrypoints.openai.metrics import NATIVE_METRICS, VLLM_METRICS
from pagoda.entrypoints.openai.routes import ROUTERS
from pagoda.entrypoints.openai.routes.server_info import optional_routers

ROOT = Path(__file__).resolve().parents[1]
SERVING = (ROOT / "docs" / "serving.md").read_text()
README = (ROOT / "README.md").read_text()

FLAG = re.compile(r"(?<![\w-])(--(?:\[no-\])?[a-z0-9][a-z0-9-]*[a-z0-9]|-[a-z]{1,3})(?![\w-])")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole Markdown heading line) up to the next heading of any level."""
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    nxt = re.search(r"^#{1,6} ", text[start:], re.M)
    return text[start:start + nxt.start()] if nxt else text[start:]


def first_cells(table_text: str, header: str) -> list[str]:
    """The first cell of each body row of the Markdown table whose header row starts with ``| header |``."""
    lines = table_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    cells = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells.append(line.split(" | ")[0].lstrip("| "))
    return cells


def documented_flags(cells: list[str]) -> set[str]:
    """The flags named in table cells, ``--[no-]x`` read as both ``--x`` and ``--no-x``."""
    out: set[str] = set()
    for cell in cells:
        for code in re.findall(r"`([^`]+)`", cell):
            for flag in FLAG.findall(code):
                out |= {flag.replace("[no-]", ""), flag.replace("[no-]", "no-")} if "[no-]" in flag else {flag}
    return out


def serve_options() -> set[str]:
    parser = add_serve_args(argparse.ArgumentParser(prog="pagoda serve"))
    return {s for a in parser._actions for s in a.option_strings}


def test_serving_flag_table_names_only_serve_flags():
    flags = documented_flags(first_cells(section(SERVING, "## Flags"), "flag"))
    assert len(flags) > 60  # the table was found and read
    assert flags - serve_options() == set()


def test_readme_main_flags_are_serve_flags():
    flags = documented_flags(first_cells(section(README, "## Serving (OpenAI-compatible)"), "main flags"))
    assert len(flags) > 25
    assert flags - serve_options() == set()


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the server can serve (the flag-gated ones too), path parameters as ``{}``."""
    everything = argparse.Namespace(enable_tokenizer_info_endpoint=True, enable_server_load_tracking=True)
    out = set()
    for router in (*ROUTERS, *optional_routers(everything)):
        for route in router.routes:
            path = re.sub(r"\{[^}]*\}", "{}", route.path)
            out |= {(m, path) for m in route.methods if m != "HEAD"}
    return out


def documented_routes() -> set[tuple[str, str]]:
    """(method, path) of the Endpoints table: ``GET /a``, ``POST /b``, and a bare ``/c`` takes the method before it."""
    out = set()
    for cell in first_cells(section(SERVING, "## Endpoints"), "route"):
        method = None
        for code in re.findall(r"`([^`]+)`", cell):
            m = re.fullmatch(r"(?:(GET|POST) )?(/\S*)", code)
            assert m, f"unreadable route cell {cell!r}"
            method = m.group(1) or method
            out.add((method, re.sub(r"\{[^}]*\}", "{}", m.group(2))))
    return out


def test_endpoint_table_is_the_servers_routes():
    chat_page = {("GET", "/")}  # documented in its own section, "Chat page"
    assert documented_routes() == app_routes() - chat_page


def test_readme_endpoint_list_names_only_routes():
    text = README[README.index("Endpoints: `/v1/models`"):]
    text = text[:text.index(". A request's `cache_salt`")]
    paths = {p for p in re.findall(r"`(?:POST |GET )?(/[a-z0-9_/]+)`", text)}
    assert len(paths) >= 15
    assert paths - {p for _, p in app_routes()} == set()


def exposed_names() -> set[str]:
    """Metric names as ``/metrics`` shows them, after the prefix: a counter with ``_total`` (prometheus_client)."""
    tables = [(name, spec[0]) for name, spec in VLLM_METRICS.items()]
    tables += [(name, spec[0]) for name, spec in NATIVE_METRICS.items()]
    return {name + "_total" if kind == "counter" and not name.endswith("_total") else name for name, kind in tables}


def test_metrics_table_is_the_exported_metrics():
    cells = first_cells(section(SERVING, "## Metrics"), "metric")
    names = {n for cell in cells for n in re.findall(r"`(?:P|pagoda):([a-z0-9_*]+)", cell)}
    exposed = exposed_names()
    for pattern in names:  # `P:gpu_prefix_cache_*_total` stands for the aliases
        assert fnmatch.filter(exposed, pattern), f"docs/serving.md names {pattern}, which /metrics does not export"
    undocumented = {n for n in exposed if not any(fnmatch.fnmatch(n, p) for p in names)}
    assert undocumented == set(), f"exported but not in docs/serving.md's Metrics table: {sorted(undocumented)}"
