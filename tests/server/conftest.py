"""Fixtures for the server tests (see server_utils.RemoteServer).

* ``tiny_model_dir``: the tiny random Llama (tests/tiny_models.py) with its context
  stretched to 2048 positions, so a request can run long enough to be interrupted;
* ``server``: the shared server most tests use (API key via PAGODA_API_KEY, two served
  names, small caps so the cap tests are cheap).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server_utils import ALIAS, API_KEY, MODEL, RemoteServer  # noqa: E402
from tiny_models import build_long_context_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_long_context_model(tmp_path_factory.mktemp("server_models") / "llama")


@pytest.fixture(scope="session")
def server(tiny_model_dir):
    srv = RemoteServer(
        str(tiny_model_dir),
        ["--served-model-name", MODEL, ALIAS, "--kv-cache-memory-bytes", "64M", "--max-num-seqs", "64",
         "--max-prompts-per-request", "4", "--max-request-body-bytes", "64K", "--max-logprobs", "5"],
        api_key=API_KEY,
    )
    yield srv
    srv.stop()
