"""`pagoda serve`'s early engine core (pagoda.engine.prelaunch): when its arguments go early, and what stops it.

The early hand-over is only worth it while the front end has not imported torch yet: a subprocess checks that
parsing and checking `serve`'s flags and deciding the hand-over import no torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pagoda.config import EngineArgs
from pagoda.engine.prelaunch import PrelaunchedCore, hand_over_early, replica_engine_args
from pagoda.models.model_files import resolves_in_place

ROOT = Path(__file__).resolve().parent.parent


class _Conn:
    def __init__(self) -> None:
        self.sent: list = []
        self.closed = False

    def send(self, obj) -> None:
        assert not self.closed, "sent on a closed pipe"
        self.sent.append(obj)

    def close(self) -> None:
        self.closed = True


class _Proc:
    terminated = False

    def terminate(self) -> None:
        self.terminated = True


def _early(tmp_path: Path) -> PrelaunchedCore:
    ipc = tmp_path / "ipc"
    ipc.mkdir(parents=True)
    return PrelaunchedCore(_Proc(), _Conn(), str(ipc), "ipc://in", "ipc://out")


def test_arguments_go_early_for_a_folder_that_resolves_in_place(tiny, tmp_path):
    early = _early(tmp_path)
    args = EngineArgs(model=str(tiny.path("llama")))
    assert hand_over_early(early, args, 20)
    assert early.conn.sent == [(replica_engine_args(args), 20, 1)] and early.conn.closed
    early.adopt(replica_engine_args(args), 20)  # the launch sends nothing twice
    assert len(early.conn.sent) == 1 and early.adopted
    early.discard()  # adopted: the server stops it, not discard
    assert not early.proc.terminated and Path(early.ipc_dir).exists()


def test_the_launch_refuses_other_arguments_than_the_early_ones(tiny, tmp_path):
    early = _early(tmp_path)
    args = EngineArgs(model=str(tiny.path("llama")))
    assert hand_over_early(early, args, 20)
    with pytest.raises(RuntimeError, match="other engine arguments"):
        early.adopt(replica_engine_args(EngineArgs(model=str(tiny.path("llama")), seed=7)), 20)


def test_an_early_core_never_adopted_is_stopped(tiny, tmp_path):
    early = _early(tmp_path)
    assert hand_over_early(early, EngineArgs(model=str(tiny.path("llama"))), 20)
    early.discard()  # e.g. the front end's own create_config failed
    assert early.proc.terminated and not Path(early.ipc_dir).exists()
    unused = _early(tmp_path / "b")  # never given its arguments: told to exit
    unused.discard()
    assert unused.conn.sent == [None] and not unused.proc.terminated
    unused.discard()
    assert unused.conn.sent == [None]


def test_what_must_wait_for_the_launch(tiny, tmp_path):
    folder = tiny.path("llama")
    gguf_only = tmp_path / "gguf"
    gguf_only.mkdir()
    (gguf_only / "config.json").write_text("{}")
    (gguf_only / "m.gguf").write_bytes(b"")
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    assert resolves_in_place(folder) and resolves_in_place(no_weights, "dummy")
    assert not resolves_in_place(no_weights)  # resolve_model raises there: the front end says why, first
    assert not resolves_in_place(gguf_only)  # a conversion (under a lock) comes first
    assert not resolves_in_place(folder, "gguf")
    assert not resolves_in_place("org/some-model")  # a hub download comes first
    assert not resolves_in_place(tmp_path / "missing")
    cases = [
        EngineArgs(model=str(folder), data_parallel_size=2),
        EngineArgs(model=str(gguf_only)),
        EngineArgs(model=str(folder), tokenizer="org/tokenizer"),
    ]
    for i, args in enumerate(cases):
        early = _early(tmp_path / f"case{i}")
        assert not hand_over_early(early, args, 20)
        assert early.conn.sent == []


def test_serve_parses_checks_and_hands_over_before_importing_torch(tiny):
    code = (
        "import sys\n"
        "from pagoda.entrypoints.cli import build_parser\n"
        "from pagoda.entrypoints.openai.cli_args import engine_args_from, validate_serve_args\n"
        "from pagoda.engine.prelaunch import hand_over_early\n"
        "from pagoda.models.model_files import resolves_in_place\n"
        f"args = build_parser().parse_args(['serve', {str(tiny.path('llama'))!r}, '--max-model-len', '256'])\n"
        "validate_serve_args(args)\n"
        "assert resolves_in_place(engine_args_from(args).model)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
