"""Deployment review: what the images, the Prometheus config and the packaging must give a running pagoda.

* the Kubernetes scrape job labels every series with the ``namespace`` and ``pod`` that docs/deploy.md's
  prometheus-adapter rule selects on (without them the HPA finds no metric);
* the CPU image has a C compiler at run time (pagoda compiles its native CPU kernels on first use);
* every native source pagoda compiles at run time is package data, so a ``pip install .`` (the images) has it.
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml


# ------------------------------------------------------------------- Prometheus -> prometheus-adapter -> HPA
def relabel(meta: dict[str, str], configs: list[dict]) -> dict[str, str] | None:
    """Prometheus' target relabelling for the ``keep`` and ``replace`` actions (the ones the config uses): the
    target's labels afterwards, without the ``__`` ones Prometheus drops, or None when a ``keep`` drops it."""
    labels = dict(meta)
    for c in configs:
        action = c.get("action", "replace")
        value = c.get("separator", ";").join(labels.get(s, "") for s in c.get("source_labels", []))
        m = re.fullmatch(c.get("regex", "(.*)"), value)
        if action == "keep":
            if m is None:
                return None
        elif action == "replace":
            if m is not None:
                target = m.expand(c.get("replacement", "$1").replace("$", "\\"))
                if target:
                    labels[c["target_label"]] = target
                else:
                    labels.pop(c["target_label"], None)
        else:
            pytest.fail(f"relabel action {action!r} is not simulated by this test")
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def adapter_rule(repo_root: Path) -> dict:
    """The prometheus-adapter rule docs/deploy.md tells the reader to install."""
    text = (repo_root / "docs" / "deploy.md").read_text()
    block = re.search(r"```yaml\n(rules:.*?)```", text, re.S)
    assert block, "docs/deploy.md no longer shows the prometheus-adapter rule"
    (rule,) = yaml.safe_load(block.group(1))["rules"]["custom"]
    return rule


def test_k8s_scrape_job_gives_the_labels_the_hpa_adapter_selects_on(repo_root):
    prom = yaml.safe_load((repo_root / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "pagoda-replicas-k8s")
    # an engine pod's endpoint as Kubernetes service discovery (role: endpoints) describes it
    meta = {"__address__": "10.0.0.7:8000", "__meta_kubernetes_namespace": "prod",
            "__meta_kubernetes_service_label_app_kubernetes_io_name": "pagoda",
            "__meta_kubernetes_service_label_app_kubernetes_io_component": "engine",
            "__meta_kubernetes_endpoint_port_name": "http", "__meta_kubernetes_pod_name": "pagoda-engine-abc12"}
    target = relabel(meta, job["relabel_configs"])
    assert target is not None, "the job drops the engine pods"
    assert relabel({**meta, "__meta_kubernetes_endpoint_port_name": "grpc"}, job["relabel_configs"]) is None
    rule = adapter_rule(repo_root)
    # the series the engine publishes carries its own labels plus the target's
    series = {"model_name": "m", "engine": "0", **target}
    for name, op, value in re.findall(r'(\w+)\s*(!=|=)\s*"([^"]*)"', rule["seriesQuery"]):
        have = series.get(name, "")
        assert (have != value) if op == "!=" else (have == value), \
            f"the adapter's seriesQuery needs {name}{op}{value!r}; the scraped series has {name}={have!r}"
    # and each label the rule maps to a Kubernetes resource names the pod's own namespace and name
    overrides = rule["resources"]["overrides"]
    assert series[next(k for k, v in overrides.items() if v["resource"] == "namespace")] == "prod"
    assert series[next(k for k, v in overrides.items() if v["resource"] == "pod")] == "pagoda-engine-abc12"


# ----------------------------------------------------------------------------------- native CPU kernels
def native_sources(repo_root: Path) -> list[Path]:
    """The C sources and headers pagoda compiles at run time (pagoda.native.compile_shared)."""
    return sorted(p for ext in ("*.c", "*.h") for p in (repo_root / "pagoda").rglob(ext))


def runtime_stage(dockerfile: Path) -> list[dict]:
    from dockerfile_parse import DockerfileParser

    ins = DockerfileParser(fileobj=dockerfile.open("rb")).structure
    last_from = max(i for i, x in enumerate(ins) if x["instruction"] == "FROM")
    return ins[last_from:]


def test_cpu_image_has_a_c_compiler_for_the_native_kernels(repo_root):
    assert native_sources(repo_root), "pagoda has no native CPU kernels any more: drop this test and the gcc"
    runs = " ".join(x["value"] for x in runtime_stage(repo_root / "deploy/docker/Dockerfile.cpu")
                    if x["instruction"] == "RUN")
    installs = " ".join(re.findall(r"apt-get install ([^&;]*)", runs))
    assert re.search(r"\bgcc\b", installs) and "libc6-dev" in installs, \
        "the CPU runtime stage installs no C compiler: every native CPU kernel falls back to torch's ops"


def package_data_globs(repo_root: Path) -> dict[str, list[str]]:
    cfg = tomllib.loads((repo_root / "pyproject.toml").read_text())
    return cfg["tool"]["setuptools"]["package-data"]


def test_every_native_source_is_package_data(repo_root):
    globs = package_data_globs(repo_root)
    missing = []
    for src in native_sources(repo_root):
        rel = src.relative_to(repo_root)
        package = ".".join(rel.parent.parts)
        if not any(fnmatch(src.name, g) for g in globs.get(package, [])):
            missing.append(str(rel))
    assert not missing, f"not in pyproject.toml's package-data, so not installed by `pip install .`: {missing}"


# ------------------------------------------------------------------------------------------------ Grafana
def test_dashboard_opens_on_the_prefix_the_shipped_stacks_publish(repo_root):
    """The compose file and the Helm chart run the replicas with --metrics-prefix vllm: the provisioned dashboard
    must open on that prefix, or every engine panel of a fresh stack reads "No data"."""
    import json

    from pagoda.entrypoints.cli import build_parser

    dashboard = json.loads((repo_root / "deploy/grafana/pagoda-dashboard.json").read_text())
    var = next(v for v in dashboard["templating"]["list"] if v["name"] == "prefix")
    compose = yaml.safe_load((repo_root / "deploy/docker/compose.yaml").read_text())
    replica = compose["services"]["pagoda-1"]["command"]
    compose_prefix = build_parser().parse_args(["serve", *replica]).metrics_prefix
    helm = yaml.safe_load((repo_root / "deploy/helm/pagoda/values.yaml").read_text())["engine"]["metricsPrefix"]
    assert compose_prefix == helm == var["current"]["value"]
    assert [o["value"] for o in var["options"] if o["selected"]] == [var["current"]["value"]]
