"""Flags whose value could be taken as something else than the user meant: each is read as vLLM reads it or
refused at start-up, never silently turned into another setting."""

from __future__ import annotations

import argparse

import pytest

from pagoda.arg_utils import parse_size
from pagoda.config import EngineArgs
from pagoda.engine.tokenizer import read_chat_template


def test_a_chat_template_path_that_does_not_exist_is_an_error_not_the_template(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages[0]['content'] }}")
    assert read_chat_template(str(f)) == "{{ messages[0]['content'] }}"
    assert read_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}").startswith("{%")
    with pytest.raises(ValueError, match="looks like a file path"):
        read_chat_template("./examples/tool_chat_template_llama3.1_json.jinja")
    long = "{% for m in messages %}" + "x" * 300 + "{{ m.content }}{% endfor %}"  # no valid file name either
    assert read_chat_template(long) == long


def test_an_empty_api_key_is_no_key(monkeypatch):
    """``--api-key "$KEY"`` with the variable unset gives no key (then $PAGODA_API_KEY), as in vLLM: never a key
    nobody can send."""
    import argparse as ap

    from pagoda.entrypoints.openai.cli_args import add_serve_args
    from pagoda.entrypoints.openai.middleware import server_api_keys

    parser = add_serve_args(ap.ArgumentParser())
    monkeypatch.delenv("PAGODA_API_KEY", raising=False)
    assert server_api_keys(parser.parse_args(["--api-key", ""])) == []
    assert server_api_keys(parser.parse_args(["--api-key", "a", "--api-key", "b"])) == ["a", "b"]
    monkeypatch.setenv("PAGODA_API_KEY", "env-key")
    assert server_api_keys(parser.parse_args([])) == ["env-key"]
    assert server_api_keys(parser.parse_args(["--api-key", ""])) == []  # given, though empty: not the env's


def test_generation_config_overrides_name_only_keys_that_are_read(tmp_path):
    (tmp_path / "generation_config.json").write_text('{"temperature": 0.6, "bos_token_id": 1}')
    args = EngineArgs(override_generation_config={"top_p": 0.5})
    assert args._generation_defaults(tmp_path) == {"temperature": 0.6, "bos_token_id": 1, "top_p": 0.5}
    with pytest.raises(ValueError, match=r"max_new_tokens sets max_tokens"):
        EngineArgs(override_generation_config={"max_tokens": 5})._generation_defaults(tmp_path)
    with pytest.raises(ValueError, match=r"\['presence_penalty'\]"):
        EngineArgs(override_generation_config={"presence_penalty": 1.5})._generation_defaults(tmp_path)
    with pytest.raises(ValueError, match="no generation_config.json"):
        EngineArgs(generation_config=str(tmp_path / "missing"))._generation_defaults(tmp_path)
    assert EngineArgs(generation_config="vllm")._generation_defaults(tmp_path) == {}


def test_sizes_read_as_vllm_reads_them():
    assert parse_size("4g") == 4 * 10**9 and parse_size("1.5k") == 1500  # a lowercase unit alone: decimal
    assert parse_size("4G") == 4 * 2**30 and parse_size("1.5K") == 1536 and parse_size("2GiB") == 2 * 2**30
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("4x")


@pytest.mark.parametrize("name", ["max_model_len", "max_num_batched_tokens", "max_num_seqs"])
@pytest.mark.parametrize("value", [0, -1])
def test_lengths_below_one_are_refused(name, value):
    with pytest.raises(ValueError, match=f"{name} must be at least 1"):
        EngineArgs(**{name: value}).validate()


def test_llm_takes_vllms_disable_log_stats_and_refuses_what_it_cannot_do(tiny):
    from pagoda import LLM

    with pytest.raises(ValueError, match="must be a bool"):
        LLM(str(tiny.path("llama")), dtype="float32", disable_log_stats="no")  # type: ignore[arg-type]
    llm = LLM(str(tiny.path("llama")), dtype="float32", disable_log_stats=True)  # vLLM scripts pass it
    assert llm.generate(["hi"], use_tqdm=False)[0].outputs
    # False (vLLM's): honoured, it keeps vLLM's stats (tests/test_offline_api_leftovers.py checks get_metrics)


def test_token_counts_read_as_vllm_reads_them():
    from pagoda.arg_utils import parse_count
    from pagoda.entrypoints.cli import build_parser

    assert parse_count("32k") == 32000 and parse_count("32K") == 32768 and parse_count("25.6k") == 25600
    assert parse_count("4096") == 4096
    with pytest.raises(argparse.ArgumentTypeError):
        parse_count("1.5")
    args = build_parser().parse_args(["serve", "--max-model-len", "32k", "--max-num-batched-tokens", "8K",
                                      "--swap-space", "16"])  # vLLM V1 keeps --swap-space for a memory check only
    assert args.max_model_len == 32000 and args.max_num_batched_tokens == 8192


def test_version_flag_prints_the_package_version(capsys):
    """``vllm --version`` / ``-v``: the installed package's version, no command needed."""
    from importlib.metadata import version

    from pagoda.entrypoints.cli import main

    for flag in ("--version", "-v"):
        with pytest.raises(SystemExit) as e:
            main([flag])
        assert e.value.code == 0
        assert capsys.readouterr().out.strip() == version("pagoda")


def test_log_level_is_one_of_loggings_levels(capsys):
    from pagoda.entrypoints.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as e:  # it used to run silently at INFO
        parser.parse_args(["--log-level", "FOO", "generate", "hi"])
    assert e.value.code == 2
    assert "argument --log-level: invalid choice: 'FOO'" in capsys.readouterr().err
    assert parser.parse_args(["--log-level", "warning", "models"]).log_level == "WARNING"


def test_ctrl_c_before_a_command_handles_it_exits_130_without_a_traceback(monkeypatch):
    """E.g. Ctrl-C during `pagoda serve`'s imports and start-up, before uvicorn handles it."""
    from pagoda.entrypoints import cli

    def interrupted(args: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_models", interrupted)
    with pytest.raises(SystemExit) as e:
        cli.main(["models"])
    assert e.value.code == 130


def test_logprobs_mode_accepts_what_the_sampler_reports(capsys):
    """The sampler reports the model's raw log-probabilities (vLLM's default, raw_logprobs): that mode is taken, and
    processed_logprobs (which pagoda used to accept while reporting raw ones) is refused naming the flag."""
    from pagoda.entrypoints.cli import build_parser

    parser = build_parser()
    parser.parse_args(["serve", "--logprobs-mode", "raw_logprobs", "some/model"])
    for mode in ("processed_logprobs", "processed_logits", "raw_logits"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["serve", "--logprobs-mode", mode, "some/model"])
        assert e.value.code == 2
        assert "--logprobs-mode is a vLLM flag that pagoda does not support" in capsys.readouterr().err


def test_llm_takes_vllms_no_op_keywords_and_refuses_the_rest_naming_them(tiny):
    """A vLLM engine keyword pagoda does not support: its default (or any value of a no-op flag) is taken, another
    value is a ValueError giving the reason before anything loads, and a keyword neither knows stays a TypeError."""
    from pagoda import LLM

    for kwargs, reason in (({"fully_sharded_loras": True}, "LoRA adapters run on one device"),
                           ({"cpu_offload_gb": 4}, "weights are not offloaded"),
                           ({"logprobs_mode": "processed_logprobs"}, "logprobs are always the model.s raw"),
                           ({"compilation_config": {"level": 3}}, "pagoda captures its own CUDA graphs")):
        (key,) = kwargs
        with pytest.raises(ValueError, match=f"vLLM's {key} is not supported by pagoda: {reason}"):
            LLM("/no/such/model", **kwargs)  # refused before the model is looked for
    with pytest.raises(TypeError, match="no_such_keyword"):
        LLM("/no/such/model", no_such_keyword=1)
    llm = LLM(str(tiny.path("llama")), dtype="float32", swap_space=4, cpu_offload_gb=0, fully_sharded_loras=False,
              tokenizer_revision=None, logprobs_mode="raw_logprobs", disable_custom_all_reduce=True)
    assert llm.generate(["hi"], use_tqdm=False)[0].outputs
