"""Fixtures of the reliability battery: the tiny random Llama (context 2048) and a fresh server per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import start_server  # noqa: E402
from tiny_models import build_long_context_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_long_context_model(tmp_path_factory.mktemp("reliability_models") / "llama")


@pytest.fixture
def make_server(tiny_model_dir):
    """``make_server(*extra_args, **kw)`` starts a server; all are stopped at the end of the test."""
    servers = []

    def start(*args: str, **kw):
        srv = start_server(tiny_model_dir, *args, **kw)
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.stop()
