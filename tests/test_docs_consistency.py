"""The user-facing docs against the code they describe: every flag in the flag tables of docs/serving.md and
the README is a ``pagoda serve`` option, the Endpoints table of docs/serving.md is exactly the server's routes
(and the README's endpoint list names only routes), and the Metrics table of docs/serving.md names exactly the
metrics ``/metrics`` exports, under their exposed names (a counter with its ``_total``). The examples of README.md
and docs/*.md as a newcomer copies them: every ``pagoda`` / ``./run`` command line parses, every ``--flag`` exists,
every repository path exists, the Python blocks compile and their pagoda imports resolve, the curl bodies are JSON;
docs/cli.md's ``bench throughput`` table and docs/deploy.md's router metrics table equal the code; README's set-up
commands are what ``run`` and ``.ci/run`` do.

(The tables that code generates, docs/cli.md's engine flags, vLLM flags and environment variables, are kept
equal to it by tests/server/test_serve_flags.py; docs/models.md by tests/test_transformers_fallback.py.)
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import re
import shlex
from pathlib import Path

from pagoda.entrypoints.openai.cli_args import add_serve_args
from pagoda.entrypoints.openai.metrics import NATIVE_METRICS, VLLM_METRICS
from pagoda.entrypoints.openai.routes import ROUTERS
from pagoda.entrypoints.openai.routes.server_info import optional_routers

ROOT = Path(__file__).resolve().parents[1]
SERVING = (ROOT / "docs" / "serving.md").read_text()
README = (ROOT / "README.md").read_text()

FLAG = re.compile(r"(?<![\w-])(--(?:\[no-\])?[a-z0-9](?:[a-z0-9-]*[a-z0-9])?|-[a-z]{1,3})(?![\w-])")


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
    """(method, path) of the Endpoints table: ``GET /a``, ``POST /b``, ``DELETE /c``, and a bare ``/d`` takes the
    method before it."""
    out = set()
    for cell in first_cells(section(SERVING, "## Endpoints"), "route"):
        method = None
        for code in re.findall(r"`([^`]+)`", cell):
            m = re.fullmatch(r"(?:(GET|POST|DELETE) )?(/\S*)", code)
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


# ------------------------------------------------------------------------------ the docs' examples, as written
# A newcomer copies commands and code from README.md and docs/*.md: each command line must be one pagoda accepts,
# each flag one some pagoda command (or the named benchmarks/ script) has, each repository path one that exists.

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = ("bash", "sh", "console", "")
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(\./run(?:\s.*)?|pagoda\s.*)$")
OTHER_TOOLS = {"docker", "helm", "kubectl", "ray", "curl", "pip", "apt-get", "openssl", "cd", "CUDA_VISIBLE_DEVICES"}
# Other programs' flags that the docs name in passing (not pagoda's, and not meant as pagoda flags).
FOREIGN_FLAGS = {
    "--no-deps",  # pip install --no-deps (README, the test-only packages)
    "--set",  # helm --set (docs/deploy.md)
    "--restart",  # docker --restart (docs/serving.md, supervisors)
    "--build",  # docker compose up --build
    "--kv-cache-metrics", "--enable-mfu-metrics",  # vLLM features docs/serving.md says pagoda lacks
}


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block, indented ones (inside list items) included."""
    out: list[tuple[str, str]] = []
    info: str | None = None
    body: list[str] = []
    indent = 0
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if info is None:
                info, body, indent = line.strip()[3:].strip(), [], len(line) - len(line.lstrip())
            else:
                out.append((info, "\n".join(body)))
                info = None
        elif info is not None:
            body.append(line[indent:] if line[:indent].isspace() else line)
    return out


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    keep, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif not inside:
            keep.append(line)
    return "\n".join(keep)


def shell_snippets(text: str) -> list[str]:
    """Each line of the shell code blocks (backslash continuations joined) and each inline code span of the prose."""
    lines = []
    for info, body in fenced_blocks(text):
        if info in SHELL_FENCES:
            lines += re.sub(r"\\\n\s*", " ", body).splitlines()
    return lines + re.findall(r"`([^`\n]+)`", prose(text))


def doc_command_lines() -> list[tuple[str, str]]:
    """(doc file, command) for each ``pagoda ...`` / ``./run ...`` command line of the docs; a synopsis
    (``pagoda generate [PROMPT ...]``, ``pagoda <command> --help``, ``…``) is left out."""
    out = []
    for path in DOC_FILES:
        for snippet in shell_snippets(path.read_text()):
            m = COMMAND.match(snippet.strip())
            if m and not re.search(r"[<\[|…]", m.group(1).split(" #")[0]):
                out.append((path.name, m.group(1)))
    return out


def pagoda_argv(command: str) -> list[str] | None:
    """The ``pagoda`` arguments a command line runs (``./run X`` is ``pagoda X``; ``./run`` alone serves), with the
    docs' placeholder counts (``N``) as numbers; None for ``./run test`` / ``./run lint`` (run's own)."""
    argv = shlex.split(command, comments=True)
    if argv and argv[-1] == "&":
        argv.pop()
    if argv[0] == "./run":
        if argv[1:2] in (["test"], ["lint"]):
            return None
        argv = ["pagoda", *(argv[1:] or ["serve"])]
    return ["2" if a in ("N", "P") else a for a in argv[1:]]


def pagoda_parser() -> argparse.ArgumentParser:
    from pagoda.entrypoints.cli import build_parser

    return build_parser()


def test_doc_command_lines_parse():
    """Every ``pagoda`` command line in README.md and docs/*.md (and a ``--serve-cmd`` it starts) is accepted by
    pagoda's own argument parser, as typed: no flag that does not exist, no value of the wrong type."""
    parser = pagoda_parser()
    commands = doc_command_lines()
    assert len(commands) > 60  # the docs were read
    failures = []
    for doc, command in commands:
        argv = pagoda_argv(command)
        if argv is None or argv[-1:] in (["--help"], ["--version"]):
            continue
        nested = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--serve-cmd"]
        for args in [argv, *(pagoda_argv(c) for c in nested)]:
            assert args is not None
            try:
                parser.parse_args(args)
            except SystemExit:
                failures.append(f"{doc}: {command}")
    assert failures == []


def all_pagoda_options() -> set[str]:
    """Every option string of every ``pagoda`` command and subcommand."""
    out: set[str] = set()
    todo = [pagoda_parser()]
    while todo:
        p = todo.pop()
        for action in p._actions:
            out |= set(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    return out


SNIPPET_FLAG = re.compile(r"(?<![\w/.=-])(--(?:\[no-\])?[a-z0-9][a-z0-9-]*[a-z0-9])(?![\w-])")


def test_doc_flags_exist():
    """Every ``--flag`` in the docs' shell blocks and code spans is an option of a pagoda command, or of a
    benchmarks/ script that doc names; other tools' commands (docker, helm, curl, ...) are left out."""
    options = all_pagoda_options()
    unknown = []
    for path in DOC_FILES:
        text = path.read_text()
        scripts = {ROOT / s for s in re.findall(r"(benchmarks/[\w/]+\.py)", text)}
        sources = "".join(s.read_text() for s in scripts if s.is_file())
        for snippet in shell_snippets(text):
            words = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", snippet.strip()).split()
            if not words or words[0] in OTHER_TOOLS:
                continue
            for flag in SNIPPET_FLAG.findall(snippet):
                names = {flag.replace("[no-]", ""), flag.replace("[no-]", "no-")} if "[no-]" in flag else {flag}
                for name in names - options - FOREIGN_FLAGS:
                    if f'"{name}"' not in sources:
                        unknown.append(f"{path.name}: {name} in `{snippet.strip()[:100]}`")
    assert unknown == []


REPO_PATH = re.compile(r"(?<![\w~./-])((?:benchmarks|pagoda|tests|deploy|docs|requirements|\.ci)/[\w./*-]*[\w*/])")


def test_doc_repository_paths_exist():
    """Every repository path README.md and docs/*.md name (``benchmarks/...``, ``tests/...``, ``deploy/...``,
    ``pagoda/...``) exists (a ``*`` pattern matches at least one file), and so does every module or script they
    name by its file name alone (``cli_args.py``)."""
    missing = []
    for path in DOC_FILES:
        for name in set(REPO_PATH.findall(path.read_text())):
            found = list(ROOT.glob(name.rstrip("/"))) if "*" in name else [ROOT / name]
            if not found or not all(p.exists() for p in found):
                missing.append(f"{path.name}: {name}")
        for name in set(re.findall(r"`(\w+\.(?:py|sh))`", path.read_text())):  # a module named by its file name
            if not any(ROOT.glob(f"{top}/**/{name}") for top in ("pagoda", "tests", "benchmarks", "deploy")):
                missing.append(f"{path.name}: {name}")
    assert missing == []


def test_doc_python_examples_compile_and_import():
    """Each Python block of the docs compiles, and every name it imports from pagoda is there."""
    import importlib

    blocks = [(path.name, body) for path in DOC_FILES for info, body in fenced_blocks(path.read_text())
              if info == "python"]
    assert len(blocks) >= 7
    missing = []
    for doc, body in blocks:
        tree = compile(body, doc, "exec", flags=ast.PyCF_ONLY_AST)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pagoda":
                module = importlib.import_module(node.module or "")
                missing += [f"{doc}: from {node.module} import {a.name}" for a in node.names
                            if not hasattr(module, a.name)]
    assert missing == []


def test_doc_inline_imports_resolve():
    """A ``from pagoda... import X`` written in the prose (an offline example in a sentence) imports."""
    import importlib

    missing = []
    for path in DOC_FILES:
        for module, names in re.findall(r"`from (pagoda[\w.]*) import ([\w, ]+)`", prose(path.read_text())):
            mod = importlib.import_module(module)
            missing += [f"{path.name}: from {module} import {n}" for n in names.split(", ") if not hasattr(mod, n)]
    assert missing == []


def test_doc_request_bodies_are_json():
    """The JSON bodies of the docs' curl commands (``-d '...'``) and their ``json`` blocks parse."""
    bodies = []
    for path in DOC_FILES:
        text = path.read_text()
        for info, body in fenced_blocks(text):
            if info == "json":
                bodies.append((path.name, body))
            elif info in SHELL_FENCES:
                bodies += [(path.name, b) for b in re.findall(r"\s-d '([^']*)'", body)]
    assert len(bodies) >= 4
    bad = []
    for doc, body in bodies:
        try:
            json.loads(body)
        except json.JSONDecodeError as e:
            bad.append(f"{doc}: {e}: {body[:80]}")
    assert bad == []


def test_bench_throughput_table_is_its_flags():
    """docs/cli.md's ``pagoda bench throughput`` table names exactly the benchmark's own flags (the engine flags,
    shared with every command, are in the engine table)."""
    from pagoda.benchmarks import throughput
    from pagoda.entrypoints.cli import add_engine_args

    bench, engine = argparse.ArgumentParser(add_help=False), argparse.ArgumentParser(add_help=False)
    throughput.add_args(bench)
    add_engine_args(engine)
    own = {s for a in bench._actions for s in a.option_strings} - {s for a in engine._actions for s in a.option_strings}
    cli = (ROOT / "docs" / "cli.md").read_text()
    documented = documented_flags(first_cells(section(cli, "## `pagoda bench throughput`"), "flag"))
    assert documented == {s for s in own if s.startswith("--")}


def test_router_metrics_table_is_the_routers_metrics():
    """docs/deploy.md's Router metrics table names each metric ``pagoda router`` exports, with its type and labels."""
    from pagoda.router.metrics import RouterMetrics

    deploy = (ROOT / "docs" / "deploy.md").read_text()
    documented = {}
    for line in section(deploy, "### Router metrics").splitlines():
        if line.startswith("| `"):
            name, kind, labels = (c.strip() for c in line.strip("|").split(" | ")[:3])
            labels = re.sub(r"\([^()]*\)", "", labels).split(" — ")[0]  # the label names, not their values
            documented[name.strip("`")] = (kind.split()[0], set(re.findall(r"`(\w+)`", labels)))
    metrics = RouterMetrics()
    exported = {}
    for family in vars(metrics).values():
        if hasattr(family, "_labelnames"):
            kind = family._type
            exported[f"{family._name}_total" if kind == "counter" else family._name] = (kind, set(family._labelnames))
    assert len(exported) >= 9
    assert documented == exported


def test_readme_setup_commands_are_what_run_does():
    """README's two set-up commands: ``./run`` (no subcommand: serve) serves, ``./run test`` lints (ruff on the three
    folders README names, mypy on pagoda/) before pytest, and CI runs exactly ``./run test``."""
    run = (ROOT / "run").read_text()
    setup = section(README, "## Set-up on a fresh machine: two commands")
    assert "./run serve" in setup and "./run test" in setup
    assert 'cmd="${1:-serve}"' in run
    test_branch = run[run.index("\n  test)"):]
    assert test_branch.index("    lint || exit 1\n") < test_branch.index("exec python -m pytest")
    assert "if ! ruff check pagoda tests benchmarks; then" in run and "if ! mypy pagoda; then" in run
    assert "ruff on pagoda/, tests/ and benchmarks/, mypy on pagoda/" in README
    assert re.search(r"^exec \./run test$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_documented_request_fields_are_declared():
    """The request fields docs/serving.md lists as honoured on completions and chat ("Request fields", the vLLM
    extras table, "Token constraints and priority") are fields of the request models (a field missing there would
    be refused as unknown)."""
    from pagoda.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest

    declared = set(CompletionRequest.model_fields) | set(ChatCompletionRequest.model_fields)
    fields_text = SERVING[SERVING.index("Request fields: every OpenAI sampling field"):]
    fields_text = fields_text[:fields_text.index("Fields that vLLM or OpenAI accept")]
    constraints = SERVING[SERVING.index("**Token constraints and priority"):]
    constraints = constraints[:constraints.index("**Structured outputs")]
    table = SERVING[SERVING.index("**vLLM's extra fields"):]
    lines = table[table.index("| field |"):].splitlines()[2:]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    extras = [r[0] for r in rows[:next(i for i, r in enumerate(rows) if len(r) < 2)]
              if not r[1].startswith("400") and not r[0].startswith("chat ")]  # honoured, not refused
    names = {n.split(".")[0] for n in re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", fields_text + constraints)}
    names |= {n for cell in extras for n in re.findall(r"`([a-z_]+)`", cell)}
    names -= {"openai", "extra_body", "continuous_usage_stats"}  # the client's parameter; a stream_options key
    assert len(names) > 35
    assert names - declared == set()


def test_readme_llm_arguments_are_llm_keywords():
    """Every argument README's ``LLM`` table names is a keyword ``LLM(...)`` takes (an ``EngineArgs`` field), and
    every ``SamplingParams`` field README lists is one of its parameters."""
    import dataclasses
    import inspect

    from pagoda import SamplingParams
    from pagoda.config import EngineArgs

    cells = first_cells(section(README, "### `LLM` arguments (vLLM's names)"), "argument")
    names = {n for cell in cells for n in re.findall(r"`(\w+)`", cell)}
    assert len(names) > 20
    assert names - {f.name for f in dataclasses.fields(EngineArgs)} == set()
    start = README.index("`SamplingParams` takes vLLM's fields: `") + len("`SamplingParams` takes vLLM's fields: `")
    listed = re.sub(r"\([^)]*\)", "", README[start:README.index("` (vLLM's", start)])
    fields = {n.strip() for n in listed.split(",")}
    assert len(fields) >= 20
    assert fields - set(inspect.signature(SamplingParams).parameters) == set()


def doc_titles(text: str) -> set[str]:
    """The headings of a doc and the bold titles that open its paragraphs (``**Title.**``), backticks dropped."""
    titles = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}
    titles |= set(re.findall(r"^(?:[-*] )?\*\*([^*]+)\*\*", text, re.M))
    return {t.replace("`", "").rstrip(".") for t in titles}


def test_doc_section_references_resolve():
    """A reference to another doc's section (``docs/design.md, "CPU threads"``) names a heading or a bold paragraph
    title of that doc, and an in-page link (``[Metrics](#metrics)``) a heading of its own doc."""
    titles = {p.name: doc_titles(p.read_text()) for p in DOC_FILES}
    broken = []
    for path in DOC_FILES:
        text = path.read_text()
        refs = re.finditer(r"(\w+\.md)`?,? ((?:\"[^\"\n]+\"(?:,? (?:and )?)?)+)", text)
        for doc, quoted in ((m.group(1), m.group(2)) for m in refs):
            for title in re.findall(r"\"([^\"\n]+)\"", quoted):
                if doc in titles and not any(t.startswith(title) for t in titles[doc]):
                    broken.append(f"{path.name}: {doc}, {title!r}")
        slugs = {re.sub(r"[^a-z0-9 -]", "", t.lower()).replace(" ", "-") for t in titles[path.name]}
        broken += [f"{path.name}: #{a}" for a in re.findall(r"\]\(#([a-z0-9-]+)\)", text) if a not in slugs]
    assert broken == []
