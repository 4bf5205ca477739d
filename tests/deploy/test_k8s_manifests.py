"""The Helm chart (deploy/helm/pagoda) and the plain manifests (deploy/k8s/pagoda.yaml): rendered by Helm's
own engine (the ``helm-python-sdk`` wheel binds Helm's Go SDK), linted, and every object validated against
Kubernetes' JSON schemas in strict mode (no unknown fields) by ``kubernetes-validate``; then what pagoda needs
of them: GPU requests, probes on /health, the HPA on vllm:num_requests_waiting, the model-cache PVC, the API
key from a Secret, and container command lines that pagoda's own argument parser accepts. No cluster here:
nothing is applied.
"""

from __future__ import annotations

import base64
import importlib.util
import json

import pytest
import yaml

from pagoda.entrypoints.cli import build_parser
from pagoda.entrypoints.openai.metrics import VLLM_METRICS

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) renders the chart")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")

K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
VARIANTS = {
    "defaults": {},
    "api-key": {"apiKey": {"value": "sk-secret"}, "engine": {"gpus": 2, "extraArgs": ["--max-model-len", "8192"]}},
    "cpu-no-hpa": {"engine": {"gpus": 0, "replicas": 3}, "autoscaling": {"enabled": False},
                   "modelCache": {"enabled": False}, "router": {"enabled": False}},
    "existing": {"apiKey": {"existingSecret": "mine", "secretKey": "k"}, "modelCache": {"existingClaim": "cache"}},
}


@pytest.fixture(scope="module")
def generate(repo_root):
    spec = importlib.util.spec_from_file_location("k8s_generate", repo_root / "deploy" / "k8s" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def objects(rendered: dict[str, str]) -> dict[str, dict]:
    """"Kind/name" -> object."""
    out = {}
    for text in rendered.values():
        for doc in yaml.safe_load_all(text):
            if doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def validate_all(objs: dict[str, dict]) -> None:
    for version in K8S_VERSIONS:
        for key, obj in objs.items():
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{key} is not a valid Kubernetes {version} object: {e.message} at {list(e.path)}")


def test_helm_lint_is_clean(repo_root):
    report = helm_python.lint(str(repo_root / "deploy" / "helm" / "pagoda"), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chart_renders_valid_kubernetes_objects(generate, variant):
    validate_all(objects(generate.render_chart(VARIANTS[variant], release="rel", namespace="ns")))


def engine(objs: dict[str, dict], release: str = "rel") -> dict:
    return objs[f"Deployment/{release}-pagoda-engine"]["spec"]["template"]["spec"]


def serve_argv(repo_root, container: dict) -> list[str]:
    """The container's command line: the CPU image's ENTRYPOINT (the CUDA one is the same) + the args."""
    from dockerfile_parse import DockerfileParser

    ins = DockerfileParser(fileobj=(repo_root / "deploy/docker/Dockerfile.cpu").open("rb")).structure
    entry = json.loads([x["value"] for x in ins if x["instruction"] == "ENTRYPOINT"][-1])
    return [*(container.get("command") or entry), *container["args"]]


def test_engine_pod_spec(repo_root, generate):
    objs = objects(generate.render_chart(VARIANTS["api-key"], release="rel", namespace="ns"))
    pod = engine(objs)
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2 and c["resources"]["requests"]["nvidia.com/gpu"] == 2
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    argv = serve_argv(repo_root, c)
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.host == "0.0.0.0" and args.port == 8000
    assert args.model_tag == "SmolLM2-135M-Instruct" and args.metrics_prefix == "vllm" and args.max_model_len == 8192
    # the API key: PAGODA_API_KEY from the chart's Secret (pagoda reads it when --api-key is not given)
    env = {e["name"]: e for e in c["env"]}
    ref = env["PAGODA_API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = objs[f"Secret/{ref['name']}"]
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == "sk-secret"
    # the model cache: the PVC mounted where PAGODA_CACHE and HF_HOME point
    mount = next(m for m in c["volumeMounts"] if m["name"] == "model-cache")["mountPath"]
    assert env["PAGODA_CACHE"]["value"].startswith(mount + "/") and env["HF_HOME"]["value"].startswith(mount + "/")
    claim = next(v for v in pod["volumes"] if v["name"] == "model-cache")["persistentVolumeClaim"]["claimName"]
    assert f"PersistentVolumeClaim/{claim}" in objs
    # the pod runs as the image's non-root user
    dockerfile = (repo_root / "deploy/docker/Dockerfile.cpu").read_text()
    assert f"USER {pod['securityContext']['runAsUser']}:" in dockerfile and pod["securityContext"]["runAsNonRoot"]


def test_hpa_scales_the_engine_on_waiting_requests(generate):
    objs = objects(generate.render_chart({}, release="rel", namespace="ns"))
    hpa = objs["HorizontalPodAutoscaler/rel-pagoda-engine"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rel-pagoda-engine"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    # prometheus-adapter names vllm:num_requests_waiting as vllm_num_requests_waiting; the engine publishes it
    assert metric["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert "num_requests_waiting" in VLLM_METRICS
    assert "replicas" not in objs["Deployment/rel-pagoda-engine"]["spec"]  # the HPA owns the count
    no_hpa = objects(generate.render_chart(VARIANTS["cpu-no-hpa"], release="rel", namespace="ns"))
    assert "HorizontalPodAutoscaler/rel-pagoda-engine" not in no_hpa
    assert no_hpa["Deployment/rel-pagoda-engine"]["spec"]["replicas"] == 3
    (c,) = engine(no_hpa)["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and "PAGODA_API_KEY" not in {e["name"] for e in c["env"]}


def test_router_discovers_the_engine_service(generate):
    objs = objects(generate.render_chart({}, release="rel", namespace="ns"))
    pod = objs["Deployment/rel-pagoda-router"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"][c["args"].index("--k8s-service") + 1] == "rel-pagoda-engine"
    assert "Service/rel-pagoda-engine" in objs and "Service/rel-pagoda-router" in objs
    rules = objs["Role/rel-pagoda-router"]["rules"]
    assert {"discovery.k8s.io"} == set(rules[0]["apiGroups"]) and "endpointslices" in rules[0]["resources"]
    assert pod["serviceAccountName"] == "rel-pagoda-router"
    for svc in ("rel-pagoda-engine", "rel-pagoda-router"):  # what the Prometheus Kubernetes job keeps
        s = objs[f"Service/{svc}"]
        assert s["metadata"]["labels"]["app.kubernetes.io/name"] == "pagoda" and s["spec"]["ports"][0]["name"] == "http"
    if "router" not in build_parser()._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
        pytest.skip("`pagoda router` is not on this branch yet (the router helper's branch adds it)")
    build_parser().parse_args([*c["command"][1:], *c["args"]])


def test_plain_manifests_are_the_rendered_chart_and_valid(repo_root, generate):
    text = (repo_root / "deploy" / "k8s" / "pagoda.yaml").read_text()
    assert text == generate.manifests(), "deploy/k8s/pagoda.yaml is stale: run python deploy/k8s/generate.py"
    objs = {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(text) if d}
    assert {k.split("/")[0] for k in objs} >= {"Deployment", "Service", "HorizontalPodAutoscaler",
                                                "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding"}
    assert "Secret/pagoda-api-key" not in objs  # the plain manifests expect the Secret to be created first
    validate_all(objs)
