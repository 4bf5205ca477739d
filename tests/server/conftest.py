"""Fixtures for the server tests (see server_utils.RemoteServer).

* ``tiny_model_dir``: the tiny random Llama (tests/tiny_models.py) with its context
  stretched to 2048 positions, so a request can run long enough to be interrupted;
* ``engine_args``: engine arguments of the tiny model for tests that drive ``AsyncLLM`` directly (module scope,
  ``OMP_NUM_THREADS=1`` for the engine-core processes they spawn);
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


@pytest.fixture(scope="module")
def engine_args(tiny_model_dir):
    from pagoda.config import EngineArgs

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # inherited by the engine-core process (see server_utils)
        yield EngineArgs(model=str(tiny_model_dir), kv_cache_memory_bytes=32 * 2**20)
