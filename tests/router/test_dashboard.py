"""The Grafana dashboard and the Prometheus config in deploy/: every metric a dashboard query names is
exported by a running replica (``pagoda:`` and ``vllm:`` names, through the dashboard's ``prefix``
variable) or by the router; the scrape config targets the ports the servers listen on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml
from router_utils import RouterThread, router_config
from server_utils import API_KEY

from pagoda.entrypoints.openai.metrics import VLLM_METRICS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/pagoda-dashboard.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SERIES_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def queries(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets (rows included) and query variables."""
    out = []

    def walk(panels: list) -> None:
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            out.append(v["definition"])
    return out


def metric_names(expr: str, prefix: str) -> set[str]:
    """Metric names in a PromQL expression: label matchers, ranges and strings removed, then every
    identifier with a colon (all pagoda/vLLM/router names have one; functions and labels do not)."""
    e = expr.replace("${prefix}", prefix).replace("$prefix", prefix)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*:[A-Za-z0-9_:]*", e))


def exposed(text: str) -> set[str]:
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line and line[0] != "#"}


def optional(name: str) -> bool:
    """Speculative-decoding series (shown "when present"): exported, as in vLLM, only by a server running with
    --speculative-config (these replicas do not), so they must be names metrics.py exports then."""
    base = name.split(":", 1)[1]
    for suffix in SERIES_SUFFIXES:
        base = base.removesuffix(suffix)
    return base.startswith("spec_decode_") and base in VLLM_METRICS


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.9, sum by (le) (rate(${prefix}:ttft_bucket{model_name=~"a:b"}[5m]))) / '
            'clamp_min(pagoda:router_x, 1e-9)')
    assert metric_names(expr, "vllm") == {"vllm:ttft_bucket", "pagoda:router_x"}


def test_every_dashboard_metric_is_exported(replicas):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = queries(dashboard)
    router = RouterThread(router_config([replicas["a"].url, replicas["b"].url], api_key=API_KEY))
    try:
        for _ in range(2):  # one request per replica: the router's per-backend series exist
            assert router.post("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2},
                               headers=AUTH).status_code == 200
        router_text = httpx.get(router.url + "/metrics", headers=AUTH, timeout=10).text
    finally:
        router.stop()
    router_names = exposed(router_text)
    checked = set()
    for prefix, replica in (("pagoda", replicas["a"]), ("vllm", replicas["b"])):
        text = replica.get("/metrics").text
        assert 'model_name="tiny"' in text  # the dashboard's model variable
        names = exposed(text)
        for expr in exprs:
            for name in metric_names(expr, prefix):
                have = router_names if name.startswith("pagoda:router_") else names
                assert name in have or optional(name), f"{name} (from {expr!r}) is not in /metrics"
                checked.add(name)
    assert len(checked) >= 25  # both prefixes' engine names plus the router's
    assert any(n.startswith("vllm:") for n in checked) and any(n.startswith("pagoda:router_") for n in checked)


def test_dashboard_covers_the_issue_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    text = " ".join(queries(dashboard))
    for needed in ("request_success_total", "time_to_first_token_seconds_bucket", "inter_token_latency_seconds",
                   "e2e_request_latency_seconds", "generation_tokens_total", "num_requests_running",
                   "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_hits_total", "num_preemptions_total",
                   "spec_decode_num_accepted_tokens_total", "pagoda:router_requests_total"):
        assert needed in text, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_scrapes_replicas_and_router():
    from pagoda.entrypoints.cli import build_parser

    cfg = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert {"pagoda-replicas", "pagoda-router", "pagoda-replicas-k8s"} <= set(jobs)
    serve_port = build_parser().parse_args(["serve"]).port
    router_port = build_parser().parse_args(["router", "--backend", "x:1"]).port
    assert all(t.endswith(f":{serve_port}") for t in jobs["pagoda-replicas"]["static_configs"][0]["targets"])
    assert jobs["pagoda-router"]["static_configs"][0]["targets"] == [f"router:{router_port}"]
    assert all(j.get("metrics_path", "/metrics") == "/metrics" for j in jobs.values())
