"""The ``pagoda`` command as a vLLM user meets it first: the model given twice, vLLM's underscore spelling of flags,
vLLM's environment variables, a hub id that cannot be fetched, ``--tokenizer`` from a tokenizer-only folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pagoda.entrypoints.cli import build_parser, check_vllm_env, engine_kwargs, main, normalize_flag_names, runs_engine
from pagoda.models.model_files import TOKENIZER_FILES, resolve_model, resolve_tokenizer


@pytest.fixture
def no_prelaunch(monkeypatch):
    """``pagoda serve`` without its early engine-core process (these tests stop before any engine)."""
    monkeypatch.setenv("PAGODA_PRELAUNCH_CORE", "0")
    for name in [k for k in os.environ if k.startswith("VLLM_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("PAGODA_API_KEY", raising=False)


# ------------------------------------------------------------------------------ MODEL and --model
def test_model_given_twice_differently_is_refused(no_prelaunch, capsys):
    p = build_parser()
    with pytest.raises(ValueError, match=r"given twice, as MODEL \(a/b\) and as --model \(c/d\)"):
        engine_kwargs(p.parse_args(["serve", "a/b", "--model", "c/d"]))
    for argv in (["serve", "a/b", "--model", "a/b"], ["serve", "a/b"], ["serve", "--model", "a/b"]):
        assert engine_kwargs(p.parse_args(argv))["model"] == "a/b"
    with pytest.raises(SystemExit) as info:  # before anything binds or loads: one error line
        main(["serve", "/no/such/model", "--model", "/another/model", "--port", "1"])
    assert "given twice" in str(info.value.code) and str(info.value.code).startswith("error: ")


def test_serve_of_a_missing_model_path_is_one_line_before_the_server_starts(no_prelaunch, tmp_path):
    """vLLM refuses a missing local model before anything starts; so does pagoda's serve (before, uvicorn's start-up
    lines came first, then the load failed): a path that does not exist, given as MODEL or --model."""
    for argv in (["serve", str(tmp_path / "missing")], ["serve", "--model", "./no/such/folder"]):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--port", "1"])
        assert str(info.value.code).startswith("error: model path does not exist:"), info.value.code


def test_model_given_twice_is_one_line_without_traceback(tmp_path):
    env = {**os.environ, "PAGODA_PRELAUNCH_CORE": "0"}
    res = subprocess.run([sys.executable, "-m", "pagoda", "serve", str(tmp_path), "--model", "org/other"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: the model is given twice")


# ------------------------------------------------------------------------------ --max_model_len (vLLM's spelling)
def test_underscore_flag_names_read_as_dashes():
    argv = ["serve", "m", "--max_model_len", "64", "--gpu_memory_utilization=0.5", "--served_model_name", "my_name",
            "--chat_template={{ a_b }}", "--", "--not_a_flag"]
    assert normalize_flag_names(argv) == ["serve", "m", "--max-model-len", "64", "--gpu-memory-utilization=0.5",
                                          "--served-model-name", "my_name", "--chat-template={{ a_b }}", "--",
                                          "--not_a_flag"]
    args = build_parser().parse_args(normalize_flag_names(argv[:-2]))
    assert (args.max_model_len, args.gpu_memory_utilization, args.served_model_name) == (64, 0.5, ["my_name"])
    assert args.chat_template == "{{ a_b }}"


def test_underscore_flag_reaches_the_command(no_prelaunch):
    """Through ``main``: the flag is parsed (and checked) as its dashed form, not refused as unrecognized."""
    with pytest.raises(SystemExit) as info:
        main(["serve", "m", "--max_num_seqs", "0", "--port", "1"])
    assert "max_num_seqs" in str(info.value.code) or "--max-num-seqs" in str(info.value.code)
    assert "unrecognized" not in str(info.value.code)


# ------------------------------------------------------------------------------ VLLM_* environment variables
def test_vllm_api_key_is_the_servers_key_as_in_vllm(monkeypatch):
    """vLLM's server takes ``VLLM_API_KEY`` when ``--api-key`` is not given; so does pagoda's (and its router), behind
    ``--api-key`` and ``PAGODA_API_KEY``."""
    from pagoda.entrypoints.openai.middleware import server_api_keys

    monkeypatch.delenv("PAGODA_API_KEY", raising=False)
    monkeypatch.setenv("VLLM_API_KEY", "secret")
    p = build_parser()
    assert server_api_keys(p.parse_args(["serve", "m"])) == ["secret"]
    assert server_api_keys(p.parse_args(["serve", "m", "--api-key", "k"])) == ["k"]
    monkeypatch.setenv("PAGODA_API_KEY", "mine")
    assert server_api_keys(p.parse_args(["serve", "m"])) == ["mine"]


def test_unread_vllm_variables_are_named(no_prelaunch, monkeypatch, caplog):
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    monkeypatch.setenv("VLLM_SOMETHING_NEW", "1")
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "0")  # read by pagoda: not named
    with caplog.at_level(logging.WARNING, logger="pagoda"):
        check_vllm_env(build_parser().parse_args(["generate"]))
    [record] = [r for r in caplog.records if "vLLM environment variables" in r.getMessage()]
    msg = record.getMessage()
    assert "VLLM_LOGGING_LEVEL (use pagoda --log-level LEVEL)" in msg and "VLLM_SOMETHING_NEW" in msg
    assert "VLLM_BATCH_INVARIANT" not in msg


def test_vllm_variables_are_checked_only_where_an_engine_runs():
    """A client of a server (``chat`` without ``--local``, ``complete``, ``bench serve``) runs no engine here, so
    the vLLM variables of the shell it runs in are none of its business; the engine commands check them."""
    p = build_parser()
    cases = {("chat",): False, ("chat", "--local"): True, ("complete",): False, ("generate",): True,
             ("models",): False, ("bench", "serve"): False, ("bench", "latency"): True, ("serve",): True}
    for argv, want in cases.items():
        assert runs_engine(argv[0], p.parse_args(list(argv))) is want, argv


# ------------------------------------------------------------------------------ hub ids
def _fake_hub_repo(cache: Path, repo: str, files: dict[str, str]) -> Path:
    """A Hugging Face cache entry for ``repo`` at ``main`` holding ``files``."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    return snap


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def test_offline_hub_id_names_the_cache_and_the_switch(hub_offline, tmp_path):
    with pytest.raises(RuntimeError) as info:
        resolve_model("org/absent", revision="v2", download_dir=str(tmp_path / "dl"))
    msg = str(info.value)
    assert f"not in the Hugging Face cache at {tmp_path / 'dl'} at revision v2" in msg
    assert "HF_HUB_OFFLINE" in msg and "--download-dir" in msg
    assert "local_files_only" not in msg  # huggingface_hub's advice to programmers is not shown


# ------------------------------------------------------------------------------ --tokenizer
def test_tokenizer_only_folder_resolves(tmp_path, tiny_tokenizer_dir):
    assert resolve_tokenizer(tiny_tokenizer_dir) == tiny_tokenizer_dir
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no tokenizer in {tmp_path / 'empty'}.*{TOKENIZER_FILES[0]}"):
        resolve_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_tokenizer(tmp_path / "absent")


def test_tokenizer_only_hub_repo_resolves(hub_offline, tmp_path, tiny_tokenizer_dir):
    files = {f.name: f.read_text() for f in tiny_tokenizer_dir.iterdir()}
    snap = _fake_hub_repo(tmp_path / "dl", "org/tok", files)
    assert resolve_tokenizer("org/tok", download_dir=str(tmp_path / "dl")) == snap


@pytest.fixture
def tiny_tokenizer_dir(tmp_path) -> Path:
    """A folder with a tokenizer and nothing else (no config.json, no weights)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import build_tokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    build_tokenizer(folder)
    for f in folder.iterdir():
        if f.name == "config.json" or f.suffix == ".safetensors":
            f.unlink() if f.is_file() else shutil.rmtree(f)
    assert not (folder / "config.json").exists() and json.loads((folder / "tokenizer_config.json").read_text())
    return folder


def test_engine_takes_a_tokenizer_only_folder(tiny, tiny_tokenizer_dir):
    """``--tokenizer DIR`` with only tokenizer files (vLLM takes any folder AutoTokenizer reads): the engine starts
    and its greedy text equals the model folder's own tokenizer's."""
    from pagoda import LLM, SamplingParams

    sp = SamplingParams(max_tokens=4, temperature=0)
    model = str(tiny.path("llama"))
    with LLM(model, dtype="float32", kv_cache_memory_bytes=32 << 20) as llm:
        ref = llm.generate("hello world", sp, use_tqdm=False)[0].outputs[0]
    with LLM(model, dtype="float32", tokenizer=str(tiny_tokenizer_dir), kv_cache_memory_bytes=32 << 20) as llm:
        got = llm.generate("hello world", sp, use_tqdm=False)[0].outputs[0]
    assert (got.token_ids, got.text) == (ref.token_ids, ref.text)


def test_url_host_brackets_ipv6():
    from pagoda.entrypoints.url_host import url_host

    assert [url_host(h) for h in ("::", "::1", "[::1]", "127.0.0.1", "localhost", None)] == [
        "[::]", "[::1]", "[::1]", "127.0.0.1", "localhost", ""]
