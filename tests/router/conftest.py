"""Fixtures of the router tests (fake replicas are per test; real ``pagoda serve`` replicas are shared)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

import pytest  # noqa: E402
from router_utils import FakeBackend, RouterThread, router_config  # noqa: E402
from server_utils import API_KEY, RemoteServer  # noqa: E402
from tiny_models import build_long_context_model  # noqa: E402

REPLICA_ARGS = ["--kv-cache-memory-bytes", "32M", "--max-num-seqs", "32"]
REPLICAS = {  # name -> (served model name, extra flags)
    "a": ("tiny", []),
    "b": ("tiny", ["--metrics-prefix", "vllm"]),  # vLLM's metric names: the router and dashboard read both
    "c": ("tiny-b", []),
    "victim": ("tiny", []),  # killed by test_router_failover
}


@pytest.fixture(scope="session")
def router_model_dir(tmp_path_factory) -> Path:
    return build_long_context_model(tmp_path_factory.mktemp("router_models") / "llama")


@pytest.fixture(scope="session")
def replicas(router_model_dir):
    """Four ``pagoda serve`` replicas of the tiny random Llama (API key ``API_KEY``), started together."""
    servers = {}
    try:
        for name, (served, extra) in REPLICAS.items():
            servers[name] = RemoteServer(str(router_model_dir), ["--served-model-name", served, *REPLICA_ARGS, *extra],
                                         api_key=API_KEY, wait=False)
        for s in servers.values():
            s.wait_ready(300)
        yield servers
    finally:
        for s in servers.values():
            s.stop()


# Fake replicas and in-process routers, made per test and stopped after it (test_router_fakes.py,
# test_router_backend_keys.py).
@pytest.fixture
def fakes():
    made: list[FakeBackend] = []

    def make(*args, **kw) -> FakeBackend:
        made.append(FakeBackend(*args, **kw))
        return made[-1]

    yield make
    for f in made:
        f.stop()


@pytest.fixture
def routers():
    made: list[RouterThread] = []

    def make(urls, *args, **kw) -> RouterThread:
        made.append(RouterThread(router_config(urls, *args, **kw)))
        return made[-1]

    yield make
    for r in made:
        r.stop()
